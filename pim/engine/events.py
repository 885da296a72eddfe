"""Progress as a stream of events: the engine emits, the front ends render; and the
secrets that must never be shown, whatever channel a text takes.

A front end passes a callable; the CLI draws progress bars or prints JSON lines,
the IaC providers write to their engine log.

Every emitter carries one `Secrets` registry. Its values are masked in events
(message and data), and, while the emitter is alive, in the records of Python's
`logging` and in the text of every `PimError` (CLI messages, Terraform
diagnostics, Pulumi errors), because those channels consult all live registries
(`mask_live`). A manifest writer masks a JSON-like structure with
`Emitter.redact_json` before writing it.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

log = logging.getLogger("pim.events")

MASK = "********"
MIN_LENGTH = 4  # shorter values would mask inside ordinary words ("us" in every "users")


class Secrets:
    """A set of values to mask: in text (`redact`) and in JSON-like data (`redact_json`).

    values: the secrets to start with. min_length: values shorter than this many
    characters are ignored by `add` unless it is given a smaller one. live: when true
    (the default), the registry is also consulted by `mask_live` while it exists,
    which is how log records and error text are masked; a registry made for one
    message (the variables of a template) passes live=False.
    """

    def __init__(self, values: Iterable[str | None] = (), *, min_length: int = MIN_LENGTH, live: bool = True):
        self._min_length = min_length
        self._values: tuple[str, ...] = ()  # longest first, so a secret inside another is masked whole
        self._lock = threading.Lock()
        for value in values:
            self.add(value)
        if live:
            with _LIVE_LOCK:
                _LIVE.add(self)

    def add(self, value: str | None, min_length: int | None = None) -> None:
        """Mask value from now on; None, empty and values shorter than min_length are ignored."""
        if not value or len(value) < (self._min_length if min_length is None else min_length):
            return
        with self._lock:
            if value not in self._values:
                self._values = tuple(sorted((*self._values, value), key=len, reverse=True))

    def __bool__(self) -> bool:
        return bool(self._values)

    def redact(self, text: str) -> str:
        """text with every registered value replaced by MASK."""
        for value in self._values:
            if value in text:
                text = text.replace(value, MASK)
        return text

    def redact_json(self, obj: Any) -> Any:
        """A copy of a JSON-like structure (dicts, lists, tuples, strings, scalars) with every
        string, keys included, redacted; other scalars are returned as they are."""
        if not self._values:
            return obj
        if isinstance(obj, str):
            return self.redact(obj)
        if isinstance(obj, dict):
            return {self.redact_json(k): self.redact_json(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [self.redact_json(v) for v in obj]
        return obj


_LIVE: "weakref.WeakSet[Secrets]" = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()


def mask_live(text: str) -> str:
    """text with the values of every live registry masked (an emitter's, a relay's)."""
    with _LIVE_LOCK:
        registries = list(_LIVE)
    for registry in registries:
        text = registry.redact(text)
    return text


def _masking_record_factory(make: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    """Wrap logging's record factory: a record whose text holds a live secret is
    replaced by its masked text (message and traceback); others are left as they are."""

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            text = record.getMessage()
        except Exception:  # a broken format string: logging reports it when the record is emitted
            return record
        masked = mask_live(text)
        if masked != text:
            record.msg, record.args = masked, ()
        if record.exc_info and record.exc_info[1] is not None:
            trace = logging.Formatter().formatException(record.exc_info)
            masked = mask_live(trace)
            if masked != trace:
                record.exc_text = masked
        return record

    factory.masks_secrets = True  # type: ignore[attr-defined]
    return factory


if not getattr(logging.getLogRecordFactory(), "masks_secrets", False):
    logging.setLogRecordFactory(_masking_record_factory(logging.getLogRecordFactory()))


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
    """What engine code holds: small helpers over one sink, and the build's secrets.

    sink: called with every Event, its message and data already masked. secrets: the
    registry to use (a new live one by default). Secrets registered with add_secret are
    masked in every event, whatever printed them (a script, an installer's console),
    in log records and in PimError text while this emitter is alive.
    """

    def __init__(self, sink: Sink | None = None, secrets: Secrets | None = None):
        self._sink = sink or _log_sink
        self.secrets = secrets if secrets is not None else Secrets()

    def add_secret(self, secret: str | None) -> None:
        """Mask secret from now on (ignored when None or shorter than MIN_LENGTH characters)."""
        self.secrets.add(secret)

    def redact(self, text: str) -> str:
        """text with this build's secrets masked."""
        return self.secrets.redact(text)

    def redact_json(self, obj: Any) -> Any:
        """A copy of a JSON-like structure with this build's secrets masked in every string
        (for manifests and other records written to disk)."""
        return self.secrets.redact_json(obj)

    def emit(self, kind: str, stage: str | None = None, message: str = "", **data: Any) -> None:
        self._sink(Event(kind, stage, self.redact(message), self.redact_json(data)))

    def log(self, stage: str | None, message: str, **data: Any) -> None:
        self.emit("log", stage, message, **data)

    def warning(self, stage: str | None, message: str) -> None:
        self.emit("warning", stage, message)

    def progress(self, stage: str, done: int, total: int | None, message: str = "") -> None:
        self.emit("progress", stage, message, done=done, total=total)
