"""Engine events as a readable log for front ends whose only channel is text lines
(Pulumi's engine log, Terraform's provider log): stage starts and ends, the engine's
own log lines, progress at most every PROGRESS_EVERY seconds per stage, and a
heartbeat after HEARTBEAT seconds of silence, so a long build is never silent."""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

from pim.engine.events import Secrets

HEARTBEAT = 30.0  # seconds of silence before "still working"
PROGRESS_EVERY = 10.0  # at most one progress line per stage this often

Log = Callable[[str, str], None]  # (level: info | warning, message)


class Relay:
    """Engine events -> log lines: stages, the engine's own log lines, progress at most every
    PROGRESS_EVERY seconds per stage, and a heartbeat after HEARTBEAT seconds of silence.

    label: prefixes every line. log: called as log(level, text). secrets: a registry, or
    the values for a new one; every line is masked through it, and so is anything else
    the process logs or raises while the relay exists (pim.engine.events.mask_live).
    """

    def __init__(self, label: str, log: Log, secrets: Secrets | Iterable[str] = ()):
        self.label, self.log = label, log
        self.secrets = secrets if isinstance(secrets, Secrets) else Secrets(secrets)
        self.started = self.last_said = time.monotonic()
        self.stage: str | None = None
        self._progress_at: dict[str, float] = {}

    def say(self, level: str, text: str) -> None:
        self.log(level, self.secrets.redact(f"{self.label}: {text}"))
        self.last_said = time.monotonic()

    def event(self, e: dict[str, Any]) -> None:
        kind, stage, msg, data = e.get("kind"), e.get("stage") or "", e.get("message", ""), e.get("data", {})
        if kind == "stage-begin":
            self.stage = stage
            self.say("info", f"{stage} started" + (" (cached)" if data.get("cached") else ""))
        elif kind == "stage-end":
            self.say("info", f"{stage} {'cached' if data.get('cached') else 'done'}" + (f": {msg}" if msg else ""))
        elif kind == "warning":
            self.say("warning", f"{stage} {msg}".strip())
        elif kind == "log" and data.get("source") != "console":  # the console is in the build's log file
            self.say("info", f"[{stage}] {msg}" if stage else msg)
        elif kind == "progress":
            done, total = data.get("done", 0), data.get("total")
            now = time.monotonic()
            if (total and done >= total) or now - self._progress_at.get(stage, 0.0) >= PROGRESS_EVERY:
                self._progress_at[stage] = now
                pct = f" ({100 * done // total}%)" if total else ""
                self.say("info", f"[{stage}] {msg} {done}/{total or '?'}{pct}".replace("  ", " "))

    def tick(self) -> None:
        now = time.monotonic()
        if now - self.last_said >= HEARTBEAT:
            self.say("info", f"still working ({self.stage or 'starting'}, {now - self.started:.0f} s so far)")
