"""An aarch64 guest as PIM runs one: the virt machine under TCG with
`-cpu max,pauth-impdef=on`, UEFI from AAVMF (found through QEMU's descriptors, the
VM's own variables store), virtio devices, and the console on ttyAMA0. The guest is
Debian's real arm64 installer (debian-installer-12-netboot-arm64, from the host's
apt), booted directly; it must reach its first dialog."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from pim.engine.events import Emitter, Event
from pim.engine.qemu import img
from pim.engine.qemu.argv import RuntimeFiles, VmConfig, build_argv, cpu_model
from pim.engine.qemu.firmware import for_vm, locate
from pim.engine.qemu.machine import Machine, pid_alive
from tests.e2e.conftest import FIXTURE_CACHE

pytestmark = pytest.mark.e2e
PACKAGE = "debian-installer-12-netboot-arm64"
TEXT = Path("usr/lib/debian-installer/images/12/arm64/text/debian-installer/arm64")


@pytest.fixture(scope="module")
def arm64_installer() -> tuple[Path, Path]:
    """(linux, initrd.gz) of Debian's arm64 text installer, unpacked once per .deb."""
    from tests.acceptance.netinst import NetinstError, installer_deb

    FIXTURE_CACHE.mkdir(parents=True, exist_ok=True)
    try:
        deb, digest = installer_deb(FIXTURE_CACHE, PACKAGE)
    except NetinstError as e:
        pytest.skip(f"the host's Debian mirror does not serve {PACKAGE} and none is cached: {e}")
    folder = FIXTURE_CACHE / f"arm64-installer-{digest[:16]}"
    if not (folder / "linux").exists():
        tmp = FIXTURE_CACHE / f".arm64-installer-{digest[:16]}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, stdout=open(tmp / "deb.tar", "wb"))
        subprocess.run(["tar", "-xf", "deb.tar", f"./{TEXT}/linux", f"./{TEXT}/initrd.gz"], cwd=tmp, check=True)
        for name in ("linux", "initrd.gz"):
            (tmp / TEXT / name).rename(tmp / name)
        shutil.rmtree(tmp / "usr")
        (tmp / "deb.tar").unlink()
        tmp.rename(folder)
    return folder / "linux", folder / "initrd.gz"


def test_the_arm64_installer_boots_under_uefi_to_its_first_dialog(arm64_installer: tuple[Path, Path],
                                                                  tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    (tmp_path / "xdg").mkdir()
    linux, initrd = arm64_installer
    disk = tmp_path / "disk.qcow2"
    img.create(disk, 2 << 30)
    found = locate("aarch64")
    assert found is not None and found.source.startswith("/usr/share/qemu/firmware/"), "AAVMF by its descriptor"
    cfg = VmConfig(name="arm64-di", disk=disk, serial_log=tmp_path / "serial.log",
                   runtime=RuntimeFiles.for_name("arm64-di"), arch="aarch64", accel="tcg", cpus=2, memory_mib=1024,
                   cpu=cpu_model("aarch64", "tcg", img.qemu_release("aarch64")),
                   firmware=for_vm("aarch64", tmp_path / "efivars.fd"), kernel=linux, initrd=initrd,
                   append="console=ttyAMA0 priority=low")
    argv = build_argv(cfg)
    assert argv[0] == "qemu-system-aarch64" and "virt,accel=tcg" in argv and "max,pauth-impdef=on" in argv
    seen: list[Event] = []
    start = time.monotonic()
    with Machine(cfg, Emitter(seen.append), "arm64") as vm:
        pid = vm.proc.pid
        deadline = start + 300
        text = ""
        while time.monotonic() < deadline:
            text = cfg.serial_log.read_text(errors="replace") if cfg.serial_log.exists() else ""
            if "Choose language" in text or "Select a language" in text:
                break
            assert vm.proc.poll() is None, f"QEMU ended: {text[-2000:]}"
            time.sleep(1)
        else:
            raise AssertionError(f"no installer dialog within 300 s; console:\n{text[-3000:]}")
        took = time.monotonic() - start
        assert "UEFI firmware" in text, "booted through AAVMF"  # its banner, on the PL011 like the rest
        # console=ttyAMA0 is the guest's only console: the dialog above came through it
        vm.stop(graceful=1.0)
    assert not pid_alive(pid)
    assert not list((tmp_path / "xdg" / "pim").glob("arm64-di.*"))
    print(f"arm64 installer: first dialog after {took:.0f} s")
