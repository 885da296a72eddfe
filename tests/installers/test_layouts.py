import shutil
from pathlib import Path

import pytest

from pim.engine.errors import InputError
from pim.engine.installers import render
from pim.engine.installers.layouts import Layout, detect

# Real directory layouts and volume ids, with tiny dummy files.
DEBIAN_AMD64 = ("Debian 12.8.0 amd64 n", ["/install.amd/vmlinuz", "/install.amd/initrd.gz",
                                          "/install.amd/gtk/vmlinuz", "/install.amd/gtk/initrd.gz",
                                          "/isolinux/isolinux.bin", "/EFI/boot/bootx64.efi", "/.disk/info"])
DEBIAN_ARM64 = ("Debian 12.8.0 arm64 n", ["/install.a64/vmlinuz", "/install.a64/initrd.gz",
                                          "/EFI/boot/bootaa64.efi", "/.disk/info"])
UBUNTU_AMD64 = ("Ubuntu-Server 24.04.1 LTS amd64", ["/casper/vmlinuz", "/casper/initrd", "/casper/hwe-vmlinuz",
                                                    "/casper/hwe-initrd", "/boot/grub/grub.cfg",
                                                    "/EFI/boot/bootx64.efi", "/.disk/info"])
UBUNTU_ARM64 = ("Ubuntu-Server 24.04.1 LTS arm64", ["/casper/vmlinuz", "/casper/initrd", "/boot/grub/grub.cfg",
                                                    "/EFI/boot/bootaa64.efi"])
ROCKY_X86 = ("Rocky-9-4-x86_64-dvd", ["/images/pxeboot/vmlinuz", "/images/pxeboot/initrd.img",
                                      "/images/install.img", "/isolinux/isolinux.cfg", "/EFI/BOOT/BOOTX64.EFI",
                                      "/.treeinfo", "/BaseOS/repodata/repomd.xml"])
ROCKY_ARM = ("Rocky-9-4-aarch64-dvd", ["/images/pxeboot/vmlinuz", "/images/pxeboot/initrd.img",
                                       "/EFI/BOOT/BOOTAA64.EFI", "/.treeinfo"])
ALMA_NO_ARCH = ("AlmaLinux-9-4-BaseOS", ["/images/pxeboot/vmlinuz", "/images/pxeboot/initrd.img",
                                         "/EFI/BOOT/BOOTAA64.EFI"])
FEDORA = ("Fedora-S-dvd-x86_64-40", ["/images/pxeboot/vmlinuz", "/images/pxeboot/initrd.img", "/.treeinfo"])

TOOLS = ["pycdlib", pytest.param("xorriso", marks=pytest.mark.skipif(shutil.which("xorriso") is None,
                                                                      reason="xorriso not installed"))]


def iso(tmp_path: Path, spec: tuple[str, list[str]], tool: str = "pycdlib") -> Path:
    from tests.installers.helpers import make_iso

    return make_iso(tmp_path / "installer.iso", spec[0], spec[1], tool)


@pytest.mark.parametrize("spec,expected", [
    (DEBIAN_AMD64, Layout("/install.amd/vmlinuz", "/install.amd/initrd.gz",
                          "auto=true priority=critical url={{ answer_url }} interface=auto "
                          "netcfg/hostname={{ hostname }} console=ttyS0,115200",
                          "debian", "Debian 12.8.0 amd64 n", "x86_64")),
    (DEBIAN_ARM64, Layout("/install.a64/vmlinuz", "/install.a64/initrd.gz",
                          "auto=true priority=critical url={{ answer_url }} interface=auto "
                          "netcfg/hostname={{ hostname }} console=ttyAMA0,115200",
                          "debian", "Debian 12.8.0 arm64 n", "aarch64")),
    (UBUNTU_AMD64, Layout("/casper/vmlinuz", "/casper/initrd",
                          "autoinstall ds=nocloud;s={{ http_url }} console=ttyS0,115200",
                          "ubuntu", "Ubuntu-Server 24.04.1 LTS amd64", "x86_64")),
    (UBUNTU_ARM64, Layout("/casper/vmlinuz", "/casper/initrd",
                          "autoinstall ds=nocloud;s={{ http_url }} console=ttyAMA0,115200",
                          "ubuntu", "Ubuntu-Server 24.04.1 LTS arm64", "aarch64")),
    (ROCKY_X86, Layout("/images/pxeboot/vmlinuz", "/images/pxeboot/initrd.img",
                       "inst.stage2=hd:LABEL=Rocky-9-4-x86_64-dvd inst.ks={{ answer_url }} inst.text "
                       "console=ttyS0,115200", "kickstart", "Rocky-9-4-x86_64-dvd", "x86_64")),
    (ROCKY_ARM, Layout("/images/pxeboot/vmlinuz", "/images/pxeboot/initrd.img",
                       "inst.stage2=hd:LABEL=Rocky-9-4-aarch64-dvd inst.ks={{ answer_url }} inst.text "
                       "console=ttyAMA0,115200", "kickstart", "Rocky-9-4-aarch64-dvd", "aarch64")),
    (ALMA_NO_ARCH, Layout("/images/pxeboot/vmlinuz", "/images/pxeboot/initrd.img",  # arch from the EFI loader
                          "inst.stage2=hd:LABEL=AlmaLinux-9-4-BaseOS inst.ks={{ answer_url }} inst.text "
                          "console=ttyAMA0,115200", "kickstart", "AlmaLinux-9-4-BaseOS", "aarch64")),
], ids=lambda x: x[0] if isinstance(x, tuple) else None)
def test_detects_the_real_layouts(tmp_path: Path, spec: tuple[str, list[str]], expected: Layout) -> None:
    assert detect(iso(tmp_path, spec)) == expected


@pytest.mark.parametrize("tool", TOOLS)
def test_isos_made_by_another_tool_with_joliet_too(tmp_path: Path, tool: str) -> None:
    for spec in (DEBIAN_AMD64, UBUNTU_AMD64, ROCKY_X86):
        layout = detect(iso(tmp_path, spec, tool))
        assert (layout.volume_id, layout.arch) == (spec[0], "x86_64")


def test_params_render_at_install_time(tmp_path: Path) -> None:
    layout = detect(iso(tmp_path, FEDORA))
    assert render(layout.params, {"answer_url": "http://10.0.2.2:8000/t/ks.cfg"}, "params") == (
        "inst.stage2=hd:LABEL=Fedora-S-dvd-x86_64-40 inst.ks=http://10.0.2.2:8000/t/ks.cfg inst.text "
        "console=ttyS0,115200")


def test_unknown_architecture_leaves_the_console_to_the_install(tmp_path: Path) -> None:
    layout = detect(iso(tmp_path, ("CentOS-Stream-9-BaseOS", ["/images/pxeboot/vmlinuz",
                                                              "/images/pxeboot/initrd.img"])))
    assert layout.arch is None
    assert layout.params.endswith("inst.text console={{ serial_console }},115200")


def test_a_volume_label_with_spaces_is_escaped_for_dracut(tmp_path: Path) -> None:
    layout = detect(iso(tmp_path, ("Fedora 40 x86_64", FEDORA[1])))
    assert layout.params.startswith("inst.stage2=hd:LABEL=Fedora\\x2040\\x20x86_64 ")


def test_unknown_iso_is_an_input_error_naming_what_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(InputError) as e:
        detect(iso(tmp_path, ("MYDATA", ["/README.txt", "/casper/vmlinuz"])))
    message = str(e.value)
    assert "installer.iso (volume 'MYDATA') has none of the installer layouts" in message
    assert "/casper/vmlinuz + /casper/initrd" in message and "set installer.boot.kernel" in message
    not_iso = tmp_path / "not.iso"
    not_iso.write_bytes(b"\0" * 40000)
    with pytest.raises(InputError, match="not a readable ISO 9660 image"):
        detect(not_iso)
