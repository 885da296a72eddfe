"""Parsing of human sizes ("4G", "512MiB") and durations ("30m", "90s")."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_SIZE_MULT = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*$", re.IGNORECASE)
_DURATION_MULT = {"s": 1, "m": 60, "h": 3600}


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string like '4G', '512M', '10GiB' (binary units)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, int):
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a size: use bytes or a number with K, M, G or T, e.g. '8G'")
    return int(float(m.group(1)) * _SIZE_MULT[m.group(2).lower()])


def parse_duration(value: int | float | str) -> float:
    """Seconds from a number or a string like '90s', '30m', '1.5h'."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, (int, float)):
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a duration: use seconds or a number with s, m or h, e.g. '30m'")
    return float(m.group(1)) * _DURATION_MULT[(m.group(2) or "s").lower()]


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.1f} {unit}" if unit != "B" else f"{n} B"
        size /= 1024
    return f"{size:.1f} TiB"
