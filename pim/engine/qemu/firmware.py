"""UEFI firmware discovery (OVMF for x86_64, AAVMF for aarch64) and per-VM vars copies."""

from __future__ import annotations

import shutil
from pathlib import Path

from pim.engine.errors import InputError
from pim.engine.qemu.argv import Firmware

# (code, vars template) pairs, most specific first: Debian/Ubuntu, Fedora, Homebrew.
_CANDIDATES: dict[str, list[tuple[str, str]]] = {
    "x86_64": [
        ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
        ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
        ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"),
        ("/opt/homebrew/share/qemu/edk2-x86_64-code.fd", "/opt/homebrew/share/qemu/edk2-i386-vars.fd"),
        ("/usr/local/share/qemu/edk2-x86_64-code.fd", "/usr/local/share/qemu/edk2-i386-vars.fd"),
    ],
    "aarch64": [
        ("/usr/share/AAVMF/AAVMF_CODE.fd", "/usr/share/AAVMF/AAVMF_VARS.fd"),
        ("/usr/share/edk2/aarch64/QEMU_EFI-pflash.raw", "/usr/share/edk2/aarch64/vars-template-pflash.raw"),
        ("/opt/homebrew/share/qemu/edk2-aarch64-code.fd", "/opt/homebrew/share/qemu/edk2-arm-vars.fd"),
        ("/usr/local/share/qemu/edk2-aarch64-code.fd", "/usr/local/share/qemu/edk2-arm-vars.fd"),
    ],
}


def discover() -> dict[str, Firmware | None]:
    found: dict[str, Firmware | None] = {}
    for arch, pairs in _CANDIDATES.items():
        found[arch] = next((Firmware(Path(c), Path(v)) for c, v in pairs if Path(c).is_file() and Path(v).is_file()), None)
    return found


def for_vm(arch: str, vars_path: Path) -> Firmware:
    """The firmware with this VM's own copy of the variables store at vars_path."""
    found = discover().get(arch)
    if found is None:
        raise InputError(f"firmware: uefi needs OVMF/AAVMF for {arch}; install it (Debian: ovmf, "
                         "qemu-efi-aarch64) or set firmware: bios")
    if not vars_path.exists():
        shutil.copyfile(found.vars, vars_path)
    return Firmware(found.code, vars_path)
