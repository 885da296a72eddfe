"""Watch a VM's serial console log: stream lines as events, spot failure lines.

QEMU writes the console to a log file itself; a thread tails that file so the
build can fail the moment an installer prints a known failure line, instead of
waiting out a long deadline.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from pathlib import Path

from pim.engine.events import Emitter

TAIL_LINES = 40

# Lines that mean the guest cannot go on, whatever the installer.
BASE_FAILURES = [
    r"Kernel panic - not syncing",
    r"VFS: Unable to mount root fs",
    r"\bInstallation step failed\b",  # debian-installer
]

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|[\x00-\x08\x0b-\x1f\x7f]")


def clean_line(raw: str) -> str:
    return _ANSI.sub("", raw).rstrip()


class ConsoleWatcher:
    def __init__(self, log_path: Path, events: Emitter, stage: str, patterns: list[str] = ()):  # type: ignore[assignment]
        self.log_path = log_path
        self.events = events
        self.stage = stage
        self._failure_re = re.compile("|".join(f"(?:{p})" for p in [*BASE_FAILURES, *patterns]))
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"console-{stage}", daemon=True)
        self.failure: str | None = None

    def __enter__(self) -> "ConsoleWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def tail(self) -> list[str]:
        with self._lock:
            return list(self._tail)

    def seen(self, pattern: str) -> bool:
        """True if any console line so far matches pattern."""
        rx = re.compile(pattern)
        with self._lock:
            return any(rx.search(line) for line in self._lines)

    def drain(self) -> None:
        """Read whatever is left in the log (call after QEMU stopped)."""
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self.log_path.exists():
            if self._stop.wait(0.1) and not self.log_path.exists():
                return
        partial = ""
        with open(self.log_path, "r", errors="replace", newline="") as f:
            while True:
                chunk = f.read(65536)
                if chunk:
                    partial += chunk.replace("\r\n", "\n").replace("\r", "\n")
                    *lines, partial = partial.split("\n")
                    for raw in lines:
                        self._line(raw)
                    continue
                if self._stop.wait(0.2):
                    # final read after stop: pick up the last bytes QEMU wrote
                    rest = f.read()
                    if rest:
                        partial += rest.replace("\r\n", "\n").replace("\r", "\n")
                    for raw in partial.split("\n"):
                        if raw.strip():
                            self._line(raw)
                    return

    def _line(self, raw: str) -> None:
        line = self.events.redact(clean_line(raw))
        if not line:
            return
        with self._lock:
            self._tail.append(line)
            self._lines.append(line)
        self.events.log(self.stage, line, source="console")
        if self.failure is None and self._failure_re.search(line):
            self.failure = line
