"""Progress as a stream of events: the engine emits, the front ends render.

A front end passes a callable; the CLI draws progress bars or prints JSON lines,
the IaC providers write to their engine log.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

log = logging.getLogger("pim.events")


@dataclass(frozen=True)
class Event:
    kind: str  # stage-begin | stage-end | log | progress | result | warning
    stage: str | None = None
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, "", {})}


Sink = Callable[[Event], None]


def _log_sink(event: Event) -> None:
    log.debug("%s %s %s", event.kind, event.stage or "-", event.message)


class Emitter:
    """What engine code holds: small helpers over one sink.

    Secrets registered with add_secret are masked in every message before it
    reaches any sink, whatever printed them (a script, an installer's console).
    """

    def __init__(self, sink: Sink | None = None):
        self._sink = sink or _log_sink
        self._secrets: set[str] = set()

    def add_secret(self, secret: str | None) -> None:
        if secret and len(secret) >= 4:
            self._secrets.add(secret)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "********")
        return text

    def emit(self, kind: str, stage: str | None = None, message: str = "", **data: Any) -> None:
        self._sink(Event(kind, stage, self.redact(message), data))

    def log(self, stage: str | None, message: str, **data: Any) -> None:
        self.emit("log", stage, message, **data)

    def warning(self, stage: str | None, message: str) -> None:
        self.emit("warning", stage, message)

    def progress(self, stage: str, done: int, total: int | None, message: str = "") -> None:
        self.emit("progress", stage, message, done=done, total=total)
