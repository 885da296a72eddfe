"""The installer's own log stream: a UDP syslog receiver on 127.0.0.1.

debian-installer forwards its syslog (every component's messages, wget's errors,
the kernel's) to `log_host`:`log_port` from the kernel command line. The guest
reaches the host's loopback as 10.0.2.2 through user-mode networking, so the
receiver listens on 127.0.0.1 and a free port. Lines go through the same
`LineWatch` as the serial console: redacted, emitted as events, checked for
failures, steps and downloads, so a failed package retrieval ends the build at
once, naming the step and the file.
"""

from __future__ import annotations

import re
import socket
import threading
from dataclasses import dataclass

from pim.engine.guest.console import LineWatch, Patterns, clean_line
from pim.engine.events import Emitter
from pim.engine.services.loopback import GUEST_HOST

MAX_DATAGRAM = 65535

# RFC 3164: <PRI>TIMESTAMP HOSTNAME TAG: MSG. busybox syslogd (d-i) leaves the
# host name out; a host name is taken only where a tag follows it.
_HEADER = re.compile(r"<(?P<pri>\d{1,3})>(?:(?P<time>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) )?(?P<rest>.*)", re.S)
_HOST = re.compile(r"(?P<host>[^\s:\[\]]+) (?=[^\s:\[\]]+(?:\[\d+\])?:(?: |$))")
_TAG = re.compile(r"(?P<tag>[^\s:\[\]]+)(?:\[\d+\])?:(?: |$)")


@dataclass(frozen=True)
class Record:
    facility: int | None  # None when the line had no <PRI> header
    severity: int | None  # 0 emerg ... 7 debug
    host: str | None
    tag: str | None
    text: str  # "tag[pid]: message", without priority, time stamp or host


def parse(datagram: bytes) -> list[Record]:
    """The syslog records in one datagram (usually one; a sender may pack several lines)."""
    records = []
    for raw in datagram.decode("utf-8", "replace").replace("\r\n", "\n").split("\n"):
        line = clean_line(raw)
        if not line.strip():
            continue
        head = _HEADER.match(line)
        if head is None:  # a continuation, or a sender without a header
            records.append(Record(None, None, None, None, line))
            continue
        pri, rest = int(head["pri"]), head["rest"]
        host = _HOST.match(rest) if head["time"] else None
        if host:
            rest = rest[host.end():]
        tag = _TAG.match(rest)
        records.append(Record(pri >> 3, pri & 7, host["host"] if host else None, tag["tag"] if tag else None, rest))
    return records


class SyslogReceiver:
    """A context manager: listening from enter to exit; `watch` holds what it saw."""

    def __init__(self, events: Emitter, stage: str, patterns: Patterns):
        self.events = events
        self.stage = stage
        self.watch = LineWatch(events, stage, "syslog", patterns)
        self.datagrams = 0
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"syslog-{stage}", daemon=True)

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def address(self) -> tuple[str, int]:
        assert self._sock is not None, "the receiver is not running"
        host, port = self._sock.getsockname()
        return str(host), int(port)

    @property
    def guest_address(self) -> tuple[str, int]:
        """Where a user-mode-networked guest sends its log: (log_host, log_port)."""
        return GUEST_HOST, self.port

    @property
    def failure(self) -> str | None:
        return self.watch.failure

    def tail(self) -> list[str]:
        return self.watch.tail()

    def __enter__(self) -> "SyslogReceiver":
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # d-i logs in bursts
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.05)  # how soon drain() is answered
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.drain()
        if self._sock is not None:
            self._sock.close()

    def drain(self) -> None:
        """Stop listening after reading what has arrived (call after the guest stopped)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        assert self._sock is not None
        sock = self._sock
        while True:
            try:
                data = sock.recv(MAX_DATAGRAM)
            except socket.timeout:
                if self._stop.is_set():
                    return
                continue
            except OSError:
                return
            self._receive(data)
            if self._stop.is_set():  # keep reading what is queued, without waiting
                sock.settimeout(0.0)

    def _receive(self, data: bytes) -> None:
        self.datagrams += 1
        if self.datagrams == 1:
            self.events.log(self.stage, "receiving the installer's log stream")
        for record in parse(data):
            self.watch.feed(record.text)
