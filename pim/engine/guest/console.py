"""Installer output: the serial console log, watched line by line.

QEMU writes the console to a log file itself; a thread tails that file so the
build can fail the moment an installer prints a known failure line, instead of
waiting out a long deadline. `LineWatch` is the part every installer output
stream shares (the console here, d-i's remote syslog in installers/syslog.py):
lines are redacted, kept as a tail, emitted as events and checked for failure,
progress, the installer step running and the file being downloaded.
"""

from __future__ import annotations

import posixpath
import re
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pim.engine.events import Emitter

TAIL_LINES = 40
AFTER_FAILURE = 10  # lines the tail keeps after a failure line (a panic's trace runs on)

# Lines that mean the guest cannot go on, whatever the installer.
BASE_FAILURES = [
    r"Kernel panic - not syncing",
    r"VFS: Unable to mount root fs",
    r"\bInstallation step failed\b",  # debian-installer
]

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|[\x00-\x08\x0b-\x1f\x7f]")


def clean_line(raw: str) -> str:
    return _ANSI.sub("", raw).rstrip()


@dataclass(frozen=True)
class Patterns:
    """What to look for in installer output; every string is a regex."""

    failures: tuple[str, ...] = ()  # a matching line ends the build
    progress: tuple[tuple[str, str], ...] = ()  # (regex, short label)
    step: str | None = None  # group "step": the installer component that starts now
    fetch: tuple[str, ...] = ()  # group "file": a download that starts now
    fetch_error: str | None = None  # the download started last failed


def _any(patterns: Sequence[str]) -> re.Pattern[str] | None:
    return re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None


class LineWatch:
    """One stream of installer output lines; thread-safe, fed by one reader thread.

    After a failure line, `failure` holds it, `failed_step` the installer step
    that was running and `missing` the first file whose download failed in that
    step (if any).
    """

    def __init__(self, events: Emitter, stage: str, source: str, patterns: Patterns, keep_all: bool = False):
        self.events = events
        self.stage = stage
        self.source = source
        self._failure_re = _any(patterns.failures)
        self._progress = [(re.compile(p), label) for p, label in patterns.progress]
        self._step_re = re.compile(patterns.step) if patterns.step else None
        self._fetch = [re.compile(p) for p in patterns.fetch]
        self._fetch_error_re = re.compile(patterns.fetch_error) if patterns.fetch_error else None
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._after_failure = 0
        self._lines: list[str] | None = [] if keep_all else None
        self._lock = threading.Lock()
        self.failure: str | None = None
        self.failed_step: str | None = None
        self.step: str | None = None
        self.label: str | None = None
        self.fetching: str | None = None
        self.missing: str | None = None  # the file as the installer named it (URL or path)
        self.missing_error: str | None = None

    def tail(self) -> list[str]:
        with self._lock:
            return list(self._tail)

    def seen(self, pattern: str) -> bool:
        """True if any line so far matches pattern (only when keep_all)."""
        rx = re.compile(pattern)
        with self._lock:
            return any(rx.search(line) for line in self._lines or ())

    def feed(self, line: str) -> None:
        line = self.events.redact(line)
        if not line.strip():
            return
        with self._lock:
            # The tail is what led to the failure: it stops growing a few lines after it,
            # however much more is read before the build notices (a loaded host).
            if self._after_failure < AFTER_FAILURE:
                self._tail.append(line)
                self._after_failure += self.failure is not None
            if self._lines is not None:
                self._lines.append(line)
        self.events.log(self.stage, line, source=self.source)
        self._follow(line)
        if self.failure is None and self._failure_re is not None and self._failure_re.search(line):
            self.failed_step = self.step
            self.failure = line

    def _follow(self, line: str) -> None:
        """Steps, progress labels and downloads, as the lines announce them."""
        label = next((lb for rx, lb in self._progress if rx.search(line)), None)
        m = self._step_re.search(line) if self._step_re else None
        if m and m.group("step") != self.step:
            # a download error belongs to the step that ran it
            self.step, self.fetching, self.missing, self.missing_error = m.group("step"), None, None, None
            if label:
                self.label = label
            suffix = f" ({label})" if label else ""
            self.events.log(self.stage, f"installer step: {self.step}{suffix}", step=self.step, label=label)
        elif label and label != self.label:
            self.label = label
            self.events.log(self.stage, f"installer: {label}", label=label)
        fetch = next((m for m in (rx.search(line) for rx in self._fetch) if m), None)
        if fetch:
            self.fetching = fetch.group("file")
        if self.fetching and self.missing is None and self._fetch_error_re is not None:
            error = self._fetch_error_re.search(line)
            if error:
                self.missing, self.missing_error = self.fetching, error.group(0).strip()

    def describe(self) -> str:
        """What failed, for "the installer failed ...": the step, the file it could
        not retrieve, the failure line."""
        text = f" in step {self.failed_step}" if self.failed_step else ""
        if self.missing:
            name = posixpath.basename(self.missing.rstrip("/")) or self.missing
            text += f": could not retrieve {name} ({self.missing_error} {self.missing})"
        return f"{text}: {self.failure}"


class ConsoleWatcher:
    """Tails a VM's serial log in a thread (see the module docstring). `seen_at` holds
    the monotonic time each of `timeline.BOOT_MILESTONES` was first read, for the
    stage's phases; the log is read every 0.1 s, so that is their resolution."""

    def __init__(self, log_path: Path, events: Emitter, stage: str, patterns: Sequence[str] = (),
                 progress: tuple[tuple[str, str], ...] = ()):
        from pim.engine.timeline import BOOT_MILESTONES

        self._milestones = {name: re.compile(rx) for name, rx in BOOT_MILESTONES.items()}
        self.seen_at: dict[str, float] = {}
        self.log_path = log_path
        self.events = events
        self.stage = stage
        self.watch = LineWatch(events, stage, "console",
                               Patterns(failures=(*BASE_FAILURES, *patterns), progress=progress), keep_all=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"console-{stage}", daemon=True)

    @property
    def failure(self) -> str | None:
        return self.watch.failure

    def __enter__(self) -> "ConsoleWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def tail(self) -> list[str]:
        return self.watch.tail()

    def seen(self, pattern: str) -> bool:
        """True if any console line so far matches pattern."""
        return self.watch.seen(pattern)

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
                        self._feed(clean_line(raw))
                    continue
                if self._stop.wait(0.1):
                    # final read after stop: pick up the last bytes QEMU wrote
                    rest = f.read()
                    if rest:
                        partial += rest.replace("\r\n", "\n").replace("\r", "\n")
                    for raw in partial.split("\n"):
                        if raw.strip():
                            self._feed(clean_line(raw))
                    return

    def _feed(self, line: str) -> None:
        for name, rx in self._milestones.items():
            if name not in self.seen_at and rx.search(line):
                self.seen_at[name] = time.monotonic()
        self.watch.feed(line)
