from pathlib import Path

import pytest

from pim.engine.qemu import accel

pytestmark = pytest.mark.skipif(not Path("/usr/bin/qemu-system-x86_64").exists(),
                                reason="qemu-system-x86 is not installed: run `make test`, which installs it")


def test_boot_sector_is_bootable() -> None:
    sector = accel.boot_sector()
    assert len(sector) == 512 and sector[-2:] == b"\x55\xaa"
    assert accel.MARKER in sector


def test_tcg_probe_runs_the_guest() -> None:
    ok, what = accel.probe_one("tcg")
    assert ok, what


def test_choice_works_and_is_remembered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    verdict = accel.choose("x86_64", fresh=True)
    assert verdict.accel in ("kvm", "tcg")
    assert accel.probe_one(verdict.accel)[0], "the chosen accelerator must run the probe guest"
    assert (tmp_path / "pim" / "accel-x86_64.json").exists()
    assert accel.choose("x86_64") == verdict
    assert accel.choose("x86_64", "tcg").reason.startswith("set in the config")


def test_the_arm_probe_is_an_aarch64_elf_that_prints_the_marker() -> None:
    import struct

    elf = accel.arm_probe_elf()
    assert elf[:4] == b"\x7fELF" and elf[4] == 2 and struct.unpack_from("<H", elf, 18)[0] == 183  # EM_AARCH64
    entry = struct.unpack_from("<Q", elf, 24)[0]
    assert entry == 0x40080000 + 120 and accel.MARKER in elf


@pytest.mark.skipif(not Path("/usr/bin/qemu-system-aarch64").exists(),
                    reason="qemu-system-arm is not installed: run `make test`, which installs it")
def test_tcg_probe_runs_an_aarch64_guest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ok, what = accel.probe_one("tcg", "aarch64")
    assert ok, what
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    verdict = accel.choose("aarch64", fresh=True)
    assert verdict.accel == "tcg" and "works" in verdict.tried["tcg"]
    assert verdict.reason == "TCG: this host has no hardware acceleration for aarch64 guests"
