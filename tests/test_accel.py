import re
import time
from pathlib import Path

import pytest

from pim.engine.qemu import accel

pytestmark = pytest.mark.skipif(not Path("/usr/bin/qemu-system-x86_64").exists(),
                                reason="qemu-system-x86 is not installed: run `make test`, which installs it")


def test_the_x86_probe_is_a_firmware_image_with_a_reset_vector() -> None:
    rom = accel.probe_bios()
    assert len(rom) == 0x10000 and rom[0xFFF0:0xFFF5] == bytes.fromhex("ea000000f0")  # jmp far f000:0000
    assert rom.index(accel.MARKER) == len(accel._X86_CODE) == int.from_bytes(rom[0x12:0x14], "little")


def test_tcg_probe_runs_the_guest() -> None:
    ok, what = accel.probe_one("tcg")
    assert ok, what


def test_choice_works_and_is_remembered_unless_reached_by_comparison(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    verdict = accel.choose("x86_64", fresh=True)
    assert verdict.accel in ("kvm", "tcg")
    assert accel.probe_one(verdict.accel)[0], "the chosen accelerator must run the probe guest"
    memo = tmp_path / "pim" / "accel-x86_64.json"
    by_comparison = any(v.endswith(accel.RELATIVE) for v in verdict.tried.values())
    assert memo.exists() is not by_comparison, verdict  # a KVM passed over for being slow is probed again
    assert accel.choose("x86_64").accel == verdict.accel
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


def test_a_hung_accelerator_costs_a_little_more_than_the_emulated_probe_not_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in for a hung KVM: a real QEMU whose vCPU never runs (-S), raced
    against TCG. The race gives up on it once TCG answered and it had half as long again."""
    real_start = accel.start

    def start(argv: list[str], **kw):  # type: ignore[no-untyped-def]
        if "pc,accel=kvm" in argv:
            argv = [a.replace("accel=kvm", "accel=tcg") for a in argv] + ["-S"]
        return real_start(argv, **kw)

    monkeypatch.setattr(accel, "start", start)
    monkeypatch.setattr(accel.os, "access", lambda path, mode: True)
    (kvm, kvm_ok, kvm_what), (tcg, tcg_ok, tcg_what) = accel.race(["kvm", "tcg"], timeout=30)
    assert (kvm, kvm_ok, tcg, tcg_ok) == ("kvm", False, "tcg", True), (kvm_what, tcg_what)
    waited, emulated = (float(x) for x in re.findall(r"in ([\d.]+)s", kvm_what))
    assert "made no progress" in kvm_what and "while tcg ran it" in kvm_what
    assert waited >= max(1.5 * emulated, emulated + accel.GRACE) - 0.05 and waited < 30


def test_a_working_better_accelerator_wins_and_a_failing_one_is_passed_over() -> None:
    """tcg raced against itself under another name: the better one is chosen as soon
    as it answers; an accelerator QEMU refuses is decided at once."""
    decided = accel.race(["tcg", "tcg"])
    assert len(decided) == 1 and decided[0][:2] == ("tcg", True)
    (bad, bad_ok, bad_what), (tcg, tcg_ok, _) = accel.race(["no-such-accel", "tcg"])
    assert (bad, bad_ok, tcg, tcg_ok) == ("no-such-accel", False, "tcg", True)
    assert bad_what.startswith("QEMU exited")


def test_a_prefetched_verdict_is_taken_over_and_an_unused_one_is_stopped(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setattr(accel, "_PREFETCHED", {})
    accel.prefetch("x86_64")
    assert "x86_64" in accel._PREFETCHED
    verdict = accel.choose("x86_64")
    assert verdict.accel in ("kvm", "tcg") and "x86_64" not in accel._PREFETCHED, "choose() took it over"

    # A probe whose guests never answer (-S: the vCPUs never run), stopped as at exit.
    started: list = []
    real_start = accel.start

    def start(argv: list[str], **kw):  # type: ignore[no-untyped-def]
        started.append(real_start([a.replace("accel=kvm", "accel=tcg") for a in argv] + ["-S"], **kw))
        return started[-1]

    monkeypatch.setattr(accel, "start", start)
    monkeypatch.setattr(accel.os, "access", lambda path, mode: True)
    memo = tmp_path / "pim" / "accel-x86_64.json"
    memo.unlink(missing_ok=True)
    accel.prefetch("x86_64")
    pending = accel._PREFETCHED["x86_64"]
    deadline = time.monotonic() + 10
    while len(started) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(started) == 2, "both probe guests started"
    folder = Path(next(a for a in started[0].args if a.endswith("probe.bios"))).parent.parent
    accel._stop_prefetches()
    assert not pending.thread.is_alive() and accel._PREFETCHED == {}
    assert all(proc.poll() is not None for proc in started), "no probe QEMU is left running"
    assert not folder.exists(), "the probe's folder is removed"
    assert pending.verdict is None and not memo.exists(), "a cancelled race decides and remembers nothing"
