"""Flattening an overlay chain into the final qcow2: the virtual disk is the same,
whatever order qemu-img writes its clusters in (`convert -W`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pim.engine.qemu import img


def _write(disk: Path, pattern: int, offset: str, length: str) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} {offset} {length}", str(disk)],
                   check=True, capture_output=True)


@pytest.mark.parametrize("compression", ["zstd", "zlib", "none"])
def test_a_flattened_chain_holds_the_same_virtual_disk(tmp_path: Path, compression: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[list[str]] = []
    real_run = img.run

    def run(argv: list[str], **kw):  # type: ignore[no-untyped-def]
        ran.append(argv)
        return real_run(argv, **kw)

    monkeypatch.setattr(img, "run", run)
    base, top, out = tmp_path / "base.qcow2", tmp_path / "top.qcow2", tmp_path / "out.qcow2"
    img.create(base, 64 << 20)
    for i in range(1, 40):  # clusters of several patterns, so writes out of order would show
        _write(base, i, f"{i * 1536}k", "700k")
    img.create(top, 64 << 20, backing=base)
    _write(top, 0xAB, "3M", "5M")
    _write(top, 0, "20M", "1M")  # zeros over the backing file's data
    img.convert(top, out, compression)
    (convert,) = [a for a in ran if a[1] == "convert"]
    assert "-W" in convert, "written out of order, compressed on every core"
    info = subprocess.run(["qemu-img", "info", "--output=json", str(out)], capture_output=True, text=True, check=True)
    assert '"backing-filename"' not in info.stdout, "the result stands alone"
    same = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(top), str(out)],
                          capture_output=True, text=True)
    assert same.returncode == 0, same.stdout + same.stderr
    _write(out, 0x11, "30M", "4k")  # the check can fail: a changed byte is seen
    assert subprocess.run(["qemu-img", "compare", str(top), str(out)], capture_output=True).returncode == 1
