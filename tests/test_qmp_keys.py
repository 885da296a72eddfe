import pytest

from pim.engine.qemu.qmp import keys_for


def test_text_to_chords() -> None:
    assert keys_for("Ab-1<enter>") == [["shift", "a"], ["b"], ["minus"], ["1"], ["ret"]]
    assert keys_for("url=http://x/") == [["u"], ["r"], ["l"], ["equal"], ["h"], ["t"], ["t"], ["p"],
                                         ["shift", "semicolon"], ["slash"], ["slash"], ["x"], ["slash"]]
    assert keys_for("<esc><wrong>") [0] == ["esc"]
    assert ["shift", "comma"] in keys_for("<wrong>")


def test_untypable_character() -> None:
    with pytest.raises(ValueError, match="cannot type"):
        keys_for("é")
