"""Terraform values on the wire: cty's msgpack encoding, for the types PIM's schemas use.

Terraform sends configuration, plans and state as msgpack objects (an attribute
map with every attribute present, null as nil). An unknown value ("known after
apply") is a msgpack extension (cty writes type 0; refined unknowns use other
extension codes): every extension decodes to UNKNOWN, and UNKNOWN encodes as
cty's own `d4 00 00`. Types are cty's JSON type notation: "string", "number",
"bool", ["map", "string"], ["list", "string"].
"""

from __future__ import annotations

import json
from typing import Any

import msgpack


class _Unknown:
    def __repr__(self) -> str:
        return "UNKNOWN"

    def __bool__(self) -> bool:
        return False


UNKNOWN: Any = _Unknown()
_UNKNOWN_EXT = msgpack.ExtType(0, b"\x00")


def _ext(code: int, data: bytes) -> Any:
    return UNKNOWN


def decode(raw: bytes) -> Any:
    """msgpack bytes -> Python values (None, UNKNOWN, str, int/float, bool, dict, list)."""
    if not raw:
        return None
    return msgpack.unpackb(raw, ext_hook=_ext, raw=False, strict_map_key=False)


def _default(value: Any) -> Any:
    if value is UNKNOWN:
        return _UNKNOWN_EXT
    raise TypeError(f"cannot encode {type(value).__name__} for Terraform")


def encode(value: Any) -> bytes:
    return msgpack.packb(value, default=_default, use_bin_type=True)


def type_json(cty_type: Any) -> bytes:
    """A schema attribute's `type` field: the cty type in JSON."""
    return json.dumps(cty_type, separators=(",", ":")).encode()


def conform(value: Any, cty_type: Any) -> Any:
    """value as the cty type wants it on the wire (numbers as int or float, map values as str)."""
    if value is None or value is UNKNOWN:
        return value
    if cty_type == "string":
        return str(value)
    if cty_type == "number":
        number = float(value)
        return int(number) if number.is_integer() else number
    if cty_type == "bool":
        return bool(value)
    kind, inner = cty_type
    if kind == "map":
        return {str(k): conform(v, inner) for k, v in dict(value).items()}
    return [conform(v, inner) for v in value]
