"""cty values on the wire: msgpack as Terraform writes and reads it."""

from __future__ import annotations

import msgpack

from pim.tofu.plugin import cty
from pim.tofu.plugin.base import Attr, Schema


def test_unknown_is_ctys_own_extension_both_ways() -> None:
    assert cty.encode(cty.UNKNOWN) == b"\xd4\x00\x00"
    assert cty.decode(b"\xd4\x00\x00") is cty.UNKNOWN
    # a refined unknown (another extension code, longer payload) is still unknown
    assert cty.decode(msgpack.packb(msgpack.ExtType(12, b"\x81\x01\xc3"))) is cty.UNKNOWN


def test_an_object_round_trips_with_every_attribute_present() -> None:
    schema = Schema((Attr("name", "string", ""), Attr("size", "number", ""), Attr("tags", ["map", "string"], ""),
                     Attr("ok", "bool", ""), Attr("later", "string", "", computed=True)))
    value = schema.conform({"name": "web", "size": 3.0, "tags": {"a": 1}, "later": cty.UNKNOWN, "stray": "x"})
    assert value == {"name": "web", "size": 3, "tags": {"a": "1"}, "ok": None, "later": cty.UNKNOWN}
    back = cty.decode(cty.encode(value))
    assert back["size"] == 3 and isinstance(back["size"], int) and back["later"] is cty.UNKNOWN
    assert back["ok"] is None and back["tags"] == {"a": "1"}


def test_empty_bytes_and_nil_are_null() -> None:
    assert cty.decode(b"") is None
    assert cty.decode(cty.encode(None)) is None


def test_type_json_is_ctys_notation() -> None:
    assert cty.type_json("string") == b'"string"'
    assert cty.type_json(["map", "string"]) == b'["map","string"]'


def test_unknown_computed_leaves_inputs_and_kept_names() -> None:
    schema = Schema((Attr("config", "string", "", required=True), Attr("key", "string", "", computed=True),
                     Attr("path", "string", "", computed=True), Attr("opt", "string", "", optional=True,
                                                                         computed=True)))
    out = schema.unknown_computed({"config": "c", "key": "k", "path": "p", "opt": "o"}, keep=("key",))
    assert out == {"config": "c", "key": "k", "path": cty.UNKNOWN, "opt": "o"}
