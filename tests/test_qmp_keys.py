"""Boot commands in Packer's vocabulary: chords and waits by value, and typed over real QMP."""

import time
from pathlib import Path

import pytest

from pim.engine.qemu.qmp import QMP, BootCommandError, Keys, Wait, boot_command_actions, keys_for


def test_text_to_chords() -> None:
    assert keys_for("Ab-1<enter>") == [["shift", "a"], ["b"], ["minus"], ["1"], ["ret"]]
    assert keys_for("url=http://x/") == [["u"], ["r"], ["l"], ["equal"], ["h"], ["t"], ["t"], ["p"],
                                         ["shift", "semicolon"], ["slash"], ["slash"], ["x"], ["slash"]]


def test_untypable_character() -> None:
    with pytest.raises(BootCommandError, match=r"column 1: cannot type 'é'"):
        keys_for("é")


@pytest.mark.parametrize(("token", "qcode"), [
    ("<enter>", "ret"), ("<return>", "ret"), ("<esc>", "esc"), ("<tab>", "tab"), ("<bs>", "backspace"),
    ("<del>", "delete"), ("<spacebar>", "spc"), ("<insert>", "insert"), ("<home>", "home"), ("<end>", "end"),
    ("<pageUp>", "pgup"), ("<pageDown>", "pgdn"), ("<up>", "up"), ("<down>", "down"), ("<left>", "left"),
    ("<right>", "right"), ("<f1>", "f1"), ("<f6>", "f6"), ("<f10>", "f10"), ("<f12>", "f12"),
    ("<ENTER>", "ret"), ("<PageUp>", "pgup"),  # Packer reads key names case-insensitively
])
def test_special_keys(token: str, qcode: str) -> None:
    assert boot_command_actions(token) == [Keys((qcode,))]


@pytest.mark.parametrize(("token", "seconds"), [
    ("<wait>", 1.0), ("<wait5>", 5.0), ("<wait10>", 10.0), ("<wait1m30s>", 90.0), ("<wait500ms>", 0.5),
    ("<wait2h>", 7200.0), ("<wait1.5s>", 1.5),
])
def test_waits(token: str, seconds: float) -> None:
    assert boot_command_actions(f"a{token}b") == [Keys(("a",)), Wait(seconds), Keys(("b",))]


def test_modifiers_held_until_released() -> None:
    # Ctrl+X in GRUB's editor, Alt+F2 to a second console: the Packer way.
    assert boot_command_actions("<leftCtrlOn>x<leftCtrlOff>") == [Keys(("ctrl", "x"))]
    assert boot_command_actions("<leftAltOn><wait><f2><wait><leftAltOff>") == [
        Wait(1.0), Keys(("alt", "f2")), Wait(1.0)]
    assert boot_command_actions("<rightShiftOn>ab<rightShiftOff>c") == [
        Keys(("shift_r", "a")), Keys(("shift_r", "b")), Keys(("c",))]
    assert boot_command_actions("<leftSuperOn>r<leftSuperOff><rightCtrlOn>c<rightCtrlOff>") == [
        Keys(("meta_l", "r")), Keys(("ctrl_r", "c"))]
    # Held and released with nothing between: the key alone is tapped.
    assert boot_command_actions("<leftShiftOn><leftShiftOff>") == [Keys(("shift",))]
    # One character held (Packer's <cOn>), and a special key held.
    assert boot_command_actions("<aOn><f1><aOff>") == [Keys(("a", "f1"))]


def test_packer_users_boot_command() -> None:
    # A Debian boot command as Packer users write it: nothing typed as literal "<wait>".
    actions = boot_command_actions("<wait><wait5><esc><f6><esc><end><del> auto url=http://10.0.2.2:8000/p<enter>")
    assert actions[:7] == [Wait(1.0), Wait(5.0), Keys(("esc",)), Keys(("f6",)), Keys(("esc",)), Keys(("end",)),
                           Keys(("delete",))]
    assert ["shift", "comma"] not in keys_for("<wait><wait5><esc>")
    assert actions[-1] == Keys(("ret",))


@pytest.mark.parametrize("token", ["<wrong>", "<wait5x>", "<waitm>", "<leftCtrlOnn>", "<f13>", "<abOn>"])
def test_unknown_token_is_an_error_listing_the_known_ones(token: str) -> None:
    with pytest.raises(BootCommandError) as e:
        boot_command_actions(f"ab{token}", where="installer.boot.command[1]")
    assert str(e.value).startswith(f"installer.boot.command[1]: column 3: unknown token {token!r}; known: <enter>")
    assert "<wait1m30s>" in str(e.value) and "<leftCtrl>" in str(e.value) and "<f1>..<f12>" in str(e.value)


def test_angle_brackets_that_are_not_tokens_are_typed() -> None:
    assert keys_for("a<1 b>") == [["a"], ["shift", "comma"], ["1"], ["spc"], ["b"], ["shift", "dot"]]


def test_waits_are_honoured_while_typing_over_real_qmp(stopped_qemu: Path) -> None:
    mon = QMP(stopped_qemu)
    try:
        pauses: list[float] = []

        def pause(seconds: float) -> bool:
            pauses.append(seconds)
            time.sleep(seconds)
            return False

        started = time.monotonic()
        assert mon.type_text("a<wait500ms><leftCtrlOn>x<leftCtrlOff><f6><wait0.3s>B<enter>", pause=pause)
        elapsed = time.monotonic() - started
        assert pauses == [0.5, 0.3]
        assert elapsed >= 0.8
        # A pause that reports the VM gone stops the typing there.
        sent: list[list[str]] = []
        real_send = mon.send_key
        mon.send_key = lambda keys, hold_ms=50: (sent.append(keys), real_send(keys, hold_ms))  # type: ignore[method-assign]
        assert mon.type_text("a<wait>b", pause=lambda s: True) is False
        assert sent == [["a"]]
    finally:
        mon.close()
