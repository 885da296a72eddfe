"""A synchronous QMP client with timeouts.

qemu.qmp is asyncio-based; its `legacy` module runs the event loop for us, so the
asyncio stays inside this module and the engine stays synchronous.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pim.engine.errors import VMError

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
_SPECIAL = {"<enter>": "ret", "<esc>": "esc", "<tab>": "tab", "<bs>": "backspace", "<spacebar>": "spc",
            "<up>": "up", "<down>": "down", "<left>": "left", "<right>": "right", "<f1>": "f1"}


class QMP:
    def __init__(self, path: Path, timeout: float = 10.0):
        from qemu.qmp.legacy import QEMUMonitorProtocol

        self._qmp = QEMUMonitorProtocol(str(path))
        self._qmp.settimeout(timeout)
        try:
            self._qmp.connect(negotiate=True)
        except Exception as e:  # qemu.qmp raises several unrelated types
            raise VMError(f"cannot connect to QMP at {path}: {e}") from None

    def cmd(self, name: str, **args: Any) -> Any:
        try:
            return self._qmp.cmd(name, **args)
        except Exception as e:
            raise VMError(f"QMP {name} failed: {e}") from None

    def status(self) -> str:
        return str(self.cmd("query-status")["status"])

    def system_powerdown(self) -> None:
        self.cmd("system_powerdown")

    def quit(self) -> None:
        try:
            self._qmp.cmd("quit")
        except Exception:  # QEMU may close the socket before it answers
            pass

    def send_key(self, keys: list[str], hold_ms: int = 50) -> None:
        self.cmd("send-key", keys=[{"type": "qcode", "data": k} for k in keys], **{"hold-time": hold_ms})

    def type_text(self, text: str) -> None:
        """Type a boot command. `<enter>`, `<esc>`, `<tab>`... name special keys."""
        for keys in keys_for(text):
            self.send_key(keys)

    def close(self) -> None:
        try:
            self._qmp.close()
        except Exception:
            pass


def keys_for(text: str) -> list[list[str]]:
    """Translate text into send-key chords; pure, so it is tested by value."""
    chords: list[list[str]] = []
    i = 0
    while i < len(text):
        if text[i] == "<":
            end = text.find(">", i)
            name = text[i : end + 1].lower() if end > 0 else ""
            if name in _SPECIAL:
                chords.append([_SPECIAL[name]])
                i = end + 1
                continue
        ch = text[i]
        if ch.isalpha() and ch.isascii():
            chords.append(["shift", ch.lower()] if ch.isupper() else [ch])
        elif ch.isdigit():
            chords.append([ch])
        elif ch in _KEYS:
            chords.append([_KEYS[ch]])
        elif ch in _SHIFTED:
            chords.append(["shift", _SHIFTED[ch]])
        else:
            raise ValueError(f"cannot type {ch!r} in a boot command")
        i += 1
    return chords
