"""Field types for pim.yaml: human sizes ("4G", "512MiB"), durations ("30m", "90s",
"1m30s") and text checked against a pattern with a message people can act on.

Sizes use binary units, as QEMU's own size parser does (`qemu_strtosz` in QEMU's
util/cutils.c: K, M, G, T are powers of 1024, a fraction is allowed with a unit).
"GB" and "MB" are refused rather than guessed: in other tools they mean powers of
1000, and 4 GB is 7% less than 4 GiB.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, WithJsonSchema

_SIZE = re.compile(r"(?P<num>\d+(?:\.\d+)?)\s*(?P<unit>(?P<mult>[KMGT])(?P<i>iB|B)?|B)?", re.IGNORECASE)
_SIZE_MULT = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([hms])", re.IGNORECASE)
_DURATION_MULT = {"s": 1, "m": 60, "h": 3600}
_SIZE_HELP = "use bytes or a number with K, M, G or T (binary: 1K = 1024), e.g. '8G', '512M' or '8GiB'"
_DURATION_HELP = "use seconds or numbers with h, m and s, e.g. '90s', '30m', '1m30s' or '1.5h'"


def parse_size(value: int | str) -> int:
    """Bytes (int >= 0) from an int or a string like '4G', '512M', '10GiB', '1.5G'.

    Raises ValueError quoting the value for: a bool, a negative number, a decimal unit
    such as '4GB' (ambiguous: say '4G' or '4GiB'), or a fraction of a byte ('0.3K').
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{value!r} is not a size: {_SIZE_HELP}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value!r} is not a size: a size cannot be negative")
        return value
    m = _SIZE.fullmatch(value.strip())
    if not m:
        raise ValueError(f"{value!r} is not a size: {_SIZE_HELP}")
    if m["i"] and m["i"].lower() == "b":
        raise ValueError(f"{value!r} is ambiguous ({m['mult']}B means powers of 1000 elsewhere): write "
                         f"'{m['num']}{m['mult'].upper()}' or '{m['num']}{m['mult'].upper()}iB' (binary)")
    mult = _SIZE_MULT[(m["mult"] or "").lower()]
    whole, _, frac = m["num"].partition(".")
    numerator = int(whole + frac) * mult
    denominator = 10 ** len(frac)
    if numerator % denominator:
        raise ValueError(f"{value!r} is not a whole number of bytes: {_SIZE_HELP}")
    return numerator // denominator


def parse_duration(value: int | float | str) -> float:
    """Seconds (float >= 0) from a number or a string like '90s', '30m', '1.5h', '1m30s'.

    Raises ValueError quoting the value for a bool, a negative or non-finite number
    (YAML's .inf, .nan) or any other text.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{value!r} is not a duration: {_DURATION_HELP}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{value!r} is not a duration: it must be a finite number of seconds >= 0")
        return float(value)
    text = value.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text or len({u.lower() for _, u in parts}) != len(parts):
        raise ValueError(f"{value!r} is not a duration: {_DURATION_HELP}")
    return sum(float(n) * _DURATION_MULT[u.lower()] for n, u in parts)


Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0},
                              {"type": "string", "examples": ["8G", "512M", "8GiB"]}]}),
]
"""A pydantic field type: bytes, written as an int or a string `parse_size` reads."""

Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0},
                              {"type": "string", "examples": ["30m", "90s", "1m30s"]}]}),
]
"""A pydantic field type: seconds, written as a number or a string `parse_duration` reads."""


def matching(pattern: str, rule: str, example: str) -> Any:
    """A str field type that must match `pattern` (Python syntax, fullmatch).

    Its error quotes the value, states `rule` in words and shows `example`; the JSON
    schema carries the pattern.
    """
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"{value!r} is not allowed: {rule}, e.g. {example!r}")
        return value

    anchored = pattern if pattern.startswith("^") else f"^(?:{pattern})$"  # JSON Schema's pattern searches
    return Annotated[str, AfterValidator(check), WithJsonSchema({"type": "string", "pattern": anchored})]


def human_size(n: int) -> str:
    """'512 B', '1.5 KiB' ... '2.0 TiB': bytes for people."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.1f} {unit}" if unit != "B" else f"{n} B"
        size /= 1024
    return f"{size:.1f} TiB"


GuestPath = matching(r"/[^\0]*", "give an absolute path (starting with '/')", "/etc/motd")
"""An absolute path on the guest or a node: starts with '/', no NUL byte."""
