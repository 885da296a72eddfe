"""UEFI firmware discovery (OVMF for x86_64, AAVMF for aarch64) and per-VM vars copies.

Firmware is found the standard way first: QEMU's firmware descriptors (the interop
specification, docs/interop/firmware.json in QEMU's source), JSON files in
/usr/share/qemu/firmware, /etc/qemu/firmware and $XDG_CONFIG_HOME/qemu/firmware, and
the same folders under the prefix of a QEMU installed elsewhere (Homebrew's). A
file in a later folder replaces the one of the same name in an earlier folder (an
empty file hides it); the remaining files are tried in file-name order, which is
their priority. A descriptor is used when it describes UEFI on flash for the
architecture and the machine type PIM runs (q35, virt), with a raw code image and
a variables template that exist, and needs none of the features PIM's VMs do not
provide (Secure Boot with enrolled keys, SMM). A list of well-known paths
(Debian/Ubuntu, Fedora, Homebrew) is the fallback for hosts without descriptors.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from dataclasses import dataclass
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
# The versioned machine type names the descriptors' globs match ("pc-q35-*", "virt-*").
_MACHINE_FAMILY = {"x86_64": "pc-q35", "aarch64": "virt"}
# Features a descriptor may need that PIM's VMs do not give (no SMM, no Secure Boot keys).
# (amd-sev, amd-sev-es, intel-tdx and the like say what a firmware supports, not needs.)
_UNWANTED = {"requires-smm", "secure-boot", "enrolled-keys"}


@dataclass(frozen=True)
class Found:
    """Firmware for one architecture and where it was found (a descriptor file, or
    "fallback paths")."""

    firmware: Firmware
    source: str


def search_dirs(prefixes: list[Path] | None = None) -> list[Path]:
    """The descriptor folders, lowest priority first (QEMU's firmware interop spec:
    `$datadir/qemu/firmware`, `$sysconfdir/qemu/firmware`, then the user's). A QEMU
    installed under another prefix than /usr (Homebrew's /opt/homebrew or /usr/local,
    MacPorts' /opt/local) reads its own prefix's folders: `prefixes` (default: those
    of the QEMU binaries found, `qemu_prefixes()`)."""
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    others = [p for p in (qemu_prefixes() if prefixes is None else prefixes) if p != Path("/usr")]
    return [Path("/usr/share/qemu/firmware"), *(p / "share/qemu/firmware" for p in others),
            Path("/etc/qemu/firmware"), *(p / "etc/qemu/firmware" for p in others), config / "qemu" / "firmware"]


def qemu_prefixes() -> list[Path]:
    """The install prefixes of the QEMU system emulators found (`<prefix>/bin/qemu-system-*`),
    both as found on PATH and with symlinks resolved (Homebrew links /opt/homebrew/bin into
    its Cellar)."""
    from pim.engine.errors import MissingTool
    from pim.engine.qemu.argv import qemu_binary
    from pim.engine.run import find_tool

    found: list[Path] = []
    for arch in _CANDIDATES:
        try:
            binary = Path(find_tool(qemu_binary(arch)))
        except MissingTool:
            continue
        for prefix in (binary.parent.parent, binary.resolve().parent.parent):
            if prefix not in found:
                found.append(prefix)
    return found


def descriptors(dirs: list[Path] | None = None) -> list[Path]:
    """The descriptor files in priority order, after same-named files in later folders
    replaced earlier ones (an empty file hides its name)."""
    by_name: dict[str, Path] = {}
    for folder in dirs if dirs is not None else search_dirs():
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            by_name[path.name] = path
    return [by_name[n] for n in sorted(by_name) if _size(by_name[n]) > 0]


def _size(path: Path) -> int:
    """A descriptor's size; 0 (skipped) for one that cannot be read, such as a dangling link."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _machine(arch: str) -> str:
    """The versioned machine name QEMU's `q35`/`virt` alias stands for here, e.g. pc-q35-7.2."""
    from pim.engine.qemu.img import qemu_release

    major, minor = qemu_release(arch) or (0, 0)
    return f"{_MACHINE_FAMILY[arch]}-{major}.{minor}"


def from_descriptor(path: Path, arch: str, machine: str) -> Firmware | None:
    """The firmware `path` describes, when it fits `arch` on `machine` (see the module
    docstring); None otherwise, and for a file that is not a readable descriptor."""
    try:
        d = json.loads(path.read_text())
        mapping = d["mapping"]
        if "uefi" not in d.get("interface-types", []) or mapping.get("device") != "flash":
            return None
        if _UNWANTED & set(d.get("features", [])):
            return None
        if not any(t.get("architecture") == arch and any(fnmatch.fnmatch(machine, g) for g in t.get("machines", []))
                   for t in d.get("targets", [])):
            return None
        code, template = mapping["executable"], mapping["nvram-template"]
        if code.get("format", "raw") != "raw" or template.get("format", "raw") != "raw":
            return None  # PIM gives QEMU raw pflash drives
        fw = Firmware(Path(code["filename"]), Path(template["filename"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return fw if fw.code.is_file() and fw.vars.is_file() else None


def locate(arch: str, dirs: list[Path] | None = None) -> Found | None:
    """UEFI firmware for `arch` ("x86_64" | "aarch64"): from the descriptors, else the
    fallback paths; None when neither has it."""
    if arch in _MACHINE_FAMILY:
        machine = _machine(arch)
        for path in descriptors(dirs):
            fw = from_descriptor(path, arch, machine)
            if fw is not None:
                return Found(fw, str(path))
    for code, template in _CANDIDATES.get(arch, []):
        if Path(code).is_file() and Path(template).is_file():
            return Found(Firmware(Path(code), Path(template)), "fallback paths")
    return None


def discover() -> dict[str, Firmware | None]:
    """{arch: firmware or None} for every architecture PIM builds."""
    return {arch: (f.firmware if (f := locate(arch)) else None) for arch in _CANDIDATES}


def for_vm(arch: str, vars_path: Path) -> Firmware:
    """The firmware with this VM's own copy of the variables store at vars_path.
    Raises InputError naming the package to install when none is found."""
    found = locate(arch)
    if found is None:
        raise InputError(f"firmware: uefi needs OVMF/AAVMF for {arch}; install it (Debian: ovmf, "
                         "qemu-efi-aarch64)" + (" or set firmware: bios" if arch == "x86_64" else ""))
    if not vars_path.exists():
        shutil.copyfile(found.firmware.vars, vars_path)
    return Firmware(found.firmware.code, vars_path)
