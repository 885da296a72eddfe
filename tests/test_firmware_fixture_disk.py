"""The fixture installer's prebuilt disk boots under BIOS and UEFI: its layout,
built from a stand-in root file system (no mmdebstrap, no QEMU; the real boots
are in tests/e2e/test_build.py and tests/e2e/test_uefi.py)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import _fixture_builder

KVER = "6.1.0-0-amd64"


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory):
    fixture = _fixture_builder()
    if not fixture.SYSTEMD_BOOT.is_file():
        pytest.fail("systemd-boot-efi is missing: run the suite with `make test`, which installs it")
    work = tmp_path_factory.mktemp("fixture-disk")
    root = work / "rootfs"
    (root / "boot").mkdir(parents=True)
    (root / f"boot/vmlinuz-{KVER}").write_bytes(b"kernel\n")
    (root / f"boot/initrd.img-{KVER}").write_bytes(b"initrd\n")
    return fixture, fixture.build_disk(root, KVER, work)


def _fat(disk: Path, fixture) -> str:
    return f"{disk}@@{fixture.BOOT_START_MIB << 20}"


def _mtype(disk: Path, fixture, name: str) -> bytes:
    return subprocess.run(["mtype", "-i", _fat(disk, fixture), f"::/{name}"], check=True, capture_output=True,
                          env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}).stdout


def test_mbr_boots_an_active_efi_system_partition(disk) -> None:
    fixture, image = disk
    table = json.loads(subprocess.run(["sfdisk", "--json", image], check=True, capture_output=True).stdout)
    boot, root = table["partitiontable"]["partitions"]
    assert table["partitiontable"]["label"] == "dos"
    assert (boot["type"], boot.get("bootable")) == ("ef", True)  # UEFI's ESP; BIOS: the active one
    assert boot["start"] == fixture.BOOT_START_MIB << 11 and root["type"] == "83"
    mbr = Path("/usr/lib/syslinux/mbr/mbr.bin").read_bytes()[:440]
    with image.open("rb") as f:
        assert f.read(440) == mbr  # BIOS: syslinux's MBR code starts the active partition


def test_both_boot_loaders_start_the_same_kernel(disk) -> None:
    fixture, image = disk
    assert _mtype(image, fixture, "EFI/BOOT/BOOTX64.EFI") == fixture.SYSTEMD_BOOT.read_bytes()
    assert b"default debian.conf" in _mtype(image, fixture, "loader/loader.conf")
    entry = _mtype(image, fixture, "loader/entries/debian.conf").decode()
    syslinux = _mtype(image, fixture, "syslinux.cfg").decode()
    assert "linux /vmlinuz\ninitrd /initrd.img\n" in entry
    assert f"options {fixture.KERNEL_CMDLINE}\n" in entry
    assert f"APPEND initrd=/initrd.img {fixture.KERNEL_CMDLINE}\n" in syslinux
    assert f"root=UUID={fixture.ROOT_UUID}" in fixture.KERNEL_CMDLINE
    assert _mtype(image, fixture, "vmlinuz") == b"kernel\n"
    assert _mtype(image, fixture, "ldlinux.sys")  # syslinux installed for BIOS


def test_the_arm64_disk_boots_uefi_only_and_leaves_the_kernel_to_its_installer(tmp_path: Path) -> None:
    fixture = _fixture_builder()
    arch = fixture.AARCH64
    loader = tmp_path / "systemd-bootaa64.efi"  # stands in for the arm64 package's file
    loader.write_bytes(b"MZ arm64 systemd-boot\n")
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    image = fixture.build_disk(root, "6.1.0-0-arm64", tmp_path, arch, loader)
    with image.open("rb") as f:
        assert f.read(440) == bytes(440)  # no BIOS boot code
    assert image.stat().st_size == arch.disk_mib << 20
    assert _mtype(image, fixture, "EFI/BOOT/BOOTAA64.EFI") == loader.read_bytes()  # UEFI's arm64 removable path
    entry = _mtype(image, fixture, "loader/entries/debian.conf").decode()
    assert f"options root=UUID={fixture.ROOT_UUID} ro console=ttyAMA0\n" in entry  # the virt board's PL011
    files = subprocess.run(["mdir", "-b", "-i", _fat(image, fixture), "::/"], capture_output=True, text=True,
                           env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}).stdout
    # The installer copies the kernel and the initrd its second stage made; syslinux is x86's.
    assert "vmlinuz" not in files and "ldlinux.sys" not in files, files
