"""A synchronous QMP client with timeouts, and boot commands typed through it.

qemu.qmp is asyncio-based; each `QMP` runs its own event loop, so the asyncio stays
inside this module and the engine stays synchronous.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from pim.engine.errors import InputError, VMError

log = logging.getLogger("pim.qmp")
# qemu.qmp logs connection failures at ERROR; we raise them as VMError instead.
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)

# send-key names for characters that are not their own key name (QKeyCode values).
_KEYS = {
    " ": "spc", "\n": "ret", "\t": "tab", "-": "minus", "=": "equal", "/": "slash", "\\": "backslash",
    ".": "dot", ",": "comma", ";": "semicolon", "'": "apostrophe", "`": "grave_accent",
    "[": "bracket_left", "]": "bracket_right",
}
_SHIFTED = {
    "_": "minus", "+": "equal", "?": "slash", "|": "backslash", ">": "dot", "<": "comma", ":": "semicolon",
    '"': "apostrophe", "~": "grave_accent", "{": "bracket_left", "}": "bracket_right",
    "!": "1", "@": "2", "#": "3", "$": "4", "%": "5", "^": "6", "&": "7", "*": "8", "(": "9", ")": "0",
}
# Packer's boot-command key names (case-insensitive, as Packer reads them) -> QKeyCode.
SPECIAL_KEYS = {
    "enter": "ret", "return": "ret", "esc": "esc", "tab": "tab", "bs": "backspace", "del": "delete",
    "spacebar": "spc", "insert": "insert", "home": "home", "end": "end", "pageup": "pgup", "pagedown": "pgdn",
    "up": "up", "down": "down", "left": "left", "right": "right", "menu": "menu",
    "leftalt": "alt", "rightalt": "alt_r", "leftctrl": "ctrl", "rightctrl": "ctrl_r",
    "leftshift": "shift", "rightshift": "shift_r", "leftsuper": "meta_l", "rightsuper": "meta_r",
    **{f"f{n}": f"f{n}" for n in range(1, 13)},
}
# The spellings Packer documents, for error messages.
_DOCUMENTED = ("<enter> <return> <esc> <tab> <bs> <del> <spacebar> <insert> <home> <end> <pageUp> <pageDown> "
               "<up> <down> <left> <right> <menu> <f1>..<f12> <leftAlt> <rightAlt> <leftCtrl> <rightCtrl> "
               "<leftShift> <rightShift> <leftSuper> <rightSuper>, each also as <...On>/<...Off> to hold and "
               "release it (and <cOn>/<cOff> for one character c); <wait> (1s), <waitN> (N seconds), "
               "<wait1m30s>, <wait500ms> (a duration: h, m, s, ms, us, ns)")
# What a token looks like: `<` a letter, then letters/digits/`.`, `>`. Other `<` are typed as text.
_TOKEN = re.compile(r"<([A-Za-z][A-Za-z0-9.µ]*)>")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


class BootCommandError(InputError):
    """A boot command holds a `<token>` that is not a key, a hold/release or a wait."""


@dataclass(frozen=True)
class Keys:
    """One chord: these QKeyCodes pressed together (in order) and released."""

    keys: tuple[str, ...]


@dataclass(frozen=True)
class Wait:
    """A pause before the next key, in seconds."""

    seconds: float


Action = Union[Keys, Wait]



class QMP:
    """A QMP connection whose every operation ends within `timeout` seconds.

    QEMU's monitor serves one client at a time, and greets a new one only once the
    previous one has gone: a connection left open by an interrupted caller would make
    every later connect wait forever. So each client runs on its own asyncio loop, every
    call (connect, command, disconnect) is bounded by `timeout`, and a call that fails,
    times out or is interrupted (Ctrl-C) closes the socket before the error propagates.

    Raises VMError (the monitor refused, failed or did not answer in time); an
    interrupt (KeyboardInterrupt) propagates after the connection is closed.
    """

    def __init__(self, path: Path, timeout: float = 10.0):
        import asyncio

        from qemu.qmp import QMPClient

        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._client = QMPClient(path.name)
        self._call("connect", self._client.connect(str(path)), f"cannot connect to QMP at {path}")

    def _call(self, what: str, coro: Any, failure: str) -> Any:
        import asyncio

        try:
            return self._loop.run_until_complete(asyncio.wait_for(coro, self.timeout))
        except asyncio.TimeoutError:
            self._abandon()
            raise VMError(f"{failure}: no answer within {self.timeout:g}s") from None
        except Exception as e:  # qemu.qmp raises several unrelated types
            if what == "connect":
                self._abandon()
            raise VMError(f"{failure}: {e}") from None
        except BaseException:
            self._abandon()
            raise

    def cmd(self, name: str, **args: Any) -> Any:
        return self._call(name, self._client.execute(name, args or None), f"QMP {name} failed")

    def status(self) -> str:
        return str(self.cmd("query-status")["status"])

    def system_powerdown(self) -> None:
        self.cmd("system_powerdown")

    def quit(self) -> None:
        try:
            self.cmd("quit")
        except VMError:  # QEMU may close the socket before it answers
            pass

    def send_key(self, keys: list[str], hold_ms: int = 50) -> None:
        self.cmd("send-key", keys=[{"type": "qcode", "data": k} for k in keys], **{"hold-time": hold_ms})

    def type_text(self, text: str, pause: Callable[[float], bool | None] = time.sleep) -> bool:
        """Type a boot command in Packer's vocabulary (see `boot_command_actions`).

        `pause(seconds)` runs for every wait; when it returns True (e.g. `Machine.wait`,
        meaning the VM has exited) the rest is not typed and False is returned; True
        once all of it was typed. Raises BootCommandError for an unknown token before
        any key is sent.
        """
        for action in boot_command_actions(text):
            if isinstance(action, Wait):
                if pause(action.seconds):
                    return False
            else:
                self.send_key(list(action.keys))
        return True

    def close(self) -> None:
        """Disconnect (bounded by `timeout`); never raises VMError. Idempotent."""
        if self._loop.is_closed():
            return
        try:
            self._call("disconnect", self._client.disconnect(), "QMP disconnect")
        except VMError:
            pass
        self._abandon()

    def _abandon(self) -> None:
        """Cancel whatever the loop still runs (an interrupted connect or command: the
        library closes its socket on cancellation), wait a moment for that, close the loop."""
        import asyncio

        loop = self._loop
        if loop.is_closed() or loop.is_running():
            return
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            try:
                loop.run_until_complete(asyncio.wait(pending, timeout=2.0))
            except BaseException:  # noqa: BLE001 - a second interrupt: the loop is closed below anyway
                pass
        loop.close()


def keys_for(text: str) -> list[list[str]]:
    """The chords of a boot command, waits left out; pure, so it is tested by value."""
    return [list(a.keys) for a in boot_command_actions(text) if isinstance(a, Keys)]


def boot_command_actions(text: str, where: str = "boot command") -> list[Action]:
    """Translate a boot command into key chords and waits (Packer's vocabulary).

    Text is typed as it is (upper case and symbols with shift); `<enter>`, `<f6>`,
    `<pageUp>`... are keys; `<leftCtrlOn>` holds a key down for every chord until
    `<leftCtrlOff>` (a key held and released with nothing between is tapped alone);
    `<wait>`, `<wait5>`, `<wait1m30s>` pause. Raises BootCommandError naming `where`,
    the column and the token for an unknown `<token>` or a character no US keyboard
    types, listing the known tokens.
    """
    actions: list[Action] = []
    held: list[str] = []  # QKeyCodes held down, in the order they were pressed
    used: set[str] = set()  # held keys that went into a chord
    i = 0
    while i < len(text):
        m = _TOKEN.match(text, i)
        if m:
            action = _token(m[1], held, used)
            if action is _UNKNOWN:
                raise BootCommandError(f"{where}: column {i + 1}: unknown token {m[0]!r}; known: {_DOCUMENTED}")
            if action is not None:
                actions.append(action)
            i = m.end()
            continue
        chord = _char_chord(text[i])
        if chord is None:
            raise BootCommandError(f"{where}: column {i + 1}: cannot type {text[i]!r} (a US keyboard has no key "
                                   "for it); write it another way or put it in the answer file")
        used.update(held)
        actions.append(Keys(tuple(dict.fromkeys([*held, *chord]))))
        i += 1
    return actions


_UNKNOWN = Wait(-1.0)


def _token(name: str, held: list[str], used: set[str]) -> Action | None:
    lower = name.lower()
    if lower.startswith("wait"):
        seconds = _wait_seconds(name[4:])
        return _UNKNOWN if seconds is None else Wait(seconds)
    if lower in SPECIAL_KEYS:
        used.update(held)
        return Keys(tuple(dict.fromkeys([*held, SPECIAL_KEYS[lower]])))
    for suffix, down in (("on", True), ("off", False)):
        if not lower.endswith(suffix):
            continue
        base = name[: -len(suffix)]
        key = SPECIAL_KEYS.get(base.lower())
        if key is None and len(base) == 1:
            chord = _char_chord(base)
            key = chord[-1] if chord and len(chord) == 1 else None
        if key is None:
            continue
        if down:
            if key not in held:
                held.append(key)
                used.discard(key)
            return None
        if key in held:
            held.remove(key)
            if key not in used:  # held and released with nothing between: a tap
                return Keys((*held, key))
        return None
    return _UNKNOWN


def _wait_seconds(spec: str) -> float | None:
    """`` -> 1, `5` -> 5 (seconds), `1m30s` -> 90 (Go's time.ParseDuration units); None if malformed."""
    if spec == "":
        return 1.0
    if spec.isdigit():
        return float(spec)
    parts = list(_DURATION_PART.finditer(spec))
    if not parts or "".join(p[0] for p in parts) != spec:
        return None
    return sum(float(p[1]) * _UNIT_SECONDS[p[2]] for p in parts)


def _char_chord(ch: str) -> list[str] | None:
    if ch.isascii() and ch.isalpha():
        return ["shift", ch.lower()] if ch.isupper() else [ch]
    if ch.isascii() and ch.isdigit():
        return [ch]
    if ch in _KEYS:
        return [_KEYS[ch]]
    if ch in _SHIFTED:
        return ["shift", _SHIFTED[ch]]
    return None
