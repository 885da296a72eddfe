"""The guest agent client's transient and permanent failures, against a stand-in agent on a
unix socket that speaks the QEMU guest agent protocol (one JSON object per line, the 0xFF
sentinel before guest-sync-delimited's reply). The happy path against the real agent in a
real guest is in tests/e2e/test_build.py; these are the failures a real guest rarely
shows on demand: a socket that is not there yet, a connection closed before the agent
runs, an error reply, an agent that stops answering."""

from __future__ import annotations

import json
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from pim.engine.qemu.agent import AgentError, GuestAgent


class StandInAgent:
    """Serves the guest agent protocol on `path` once start() is called.

    close_first: connections closed at once before one is served (QEMU's chardev accepts
    before the agent in the guest runs). errors: commands answered with a GenericError.
    mute: commands never answered. exec_polls: guest-exec-status answers before "exited"."""

    def __init__(self, path: Path, close_first: int = 0, errors: tuple[str, ...] = (), mute: tuple[str, ...] = (),
                 exec_polls: int = 2):
        self.path, self.close_first, self.errors, self.mute = path, close_first, errors, mute
        self.exec_polls, self.connections = exec_polls, 0
        self.commands: list[str] = []
        self.sock: socket.socket | None = None

    def start(self) -> "StandInAgent":
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(self.path))
        self.sock.listen(8)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.sock is not None:
            self.sock.close()

    def _accept(self) -> None:
        assert self.sock is not None
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            if self.connections <= self.close_first:
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        polls, buf = 0, b""
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    msg = json.loads(line)
                    cmd = msg["execute"]
                    self.commands.append(cmd)
                    if cmd in self.mute:
                        continue
                    if cmd in self.errors:
                        reply: dict[str, Any] = {"error": {"class": "GenericError", "desc": f"{cmd} refused"}}
                    elif cmd == "guest-sync-delimited":
                        conn.sendall(b"\xff")
                        reply = {"return": msg["arguments"]["id"]}
                    elif cmd == "guest-exec":
                        reply = {"return": {"pid": 42}}
                    elif cmd == "guest-exec-status":
                        polls += 1
                        reply = {"return": {"exited": polls > self.exec_polls, "exitcode": 3,
                                            "out-data": "aGVsbG8="}}  # "hello"
                    else:
                        reply = {"return": {}}
                    conn.sendall(json.dumps(reply).encode() + b"\n")


@pytest.fixture
def ga_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ga-") as folder:  # short: unix socket paths hold 107 bytes
        yield Path(folder) / "vm.ga"


def test_wait_ready_retries_a_missing_socket_and_a_closed_connection(ga_path: Path) -> None:
    agent = StandInAgent(ga_path, close_first=1)
    threading.Timer(1.5, agent.start).start()  # the socket appears only after QEMU has made it
    try:
        t0 = time.monotonic()
        ga = GuestAgent(ga_path).wait_ready(timeout=30)
        assert time.monotonic() - t0 >= 1.5
        assert agent.connections == 2 and agent.commands == ["guest-sync-delimited"]
        ga.ping()
        ga.close()
    finally:
        agent.stop()


def test_wait_ready_gives_up_at_its_timeout(ga_path: Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(AgentError, match="did not answer within 3s"):
        GuestAgent(ga_path).wait_ready(timeout=3)
    assert 3 <= time.monotonic() - t0 < 6


def test_wait_ready_ends_at_once_when_the_vm_is_gone(ga_path: Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(AgentError):
        GuestAgent(ga_path).wait_ready(timeout=60, alive=lambda: False)
    assert time.monotonic() - t0 < 2


def test_an_error_reply_is_raised_at_once_and_not_sent_again(ga_path: Path) -> None:
    agent = StandInAgent(ga_path, errors=("guest-file-open",)).start()
    try:
        ga = GuestAgent(ga_path).wait_ready(timeout=10)
        with pytest.raises(AgentError, match="guest-file-open: GenericError: guest-file-open refused"):
            ga.file_read("/etc/machine-id")
        assert agent.commands.count("guest-file-open") == 1
        ga.close()
    finally:
        agent.stop()


def test_a_command_the_agent_never_answers_ends_at_its_timeout(ga_path: Path) -> None:
    agent = StandInAgent(ga_path, mute=("guest-info",)).start()
    try:
        ga = GuestAgent(ga_path, timeout=1.0).wait_ready(timeout=10)
        t0 = time.monotonic()
        with pytest.raises(AgentError, match="timed out"):
            ga.info()
        assert 1.0 <= time.monotonic() - t0 < 3
        assert agent.commands.count("guest-info") == 1
    finally:
        agent.stop()


def test_guest_exec_polls_its_status_until_the_command_exits(ga_path: Path) -> None:
    agent = StandInAgent(ga_path, exec_polls=3).start()
    try:
        ga = GuestAgent(ga_path).wait_ready(timeout=10)
        assert ga.exec(["/bin/true"], timeout=10) == (3, b"hello", b"")
        assert agent.commands.count("guest-exec") == 1 and agent.commands.count("guest-exec-status") == 4
    finally:
        agent.stop()
