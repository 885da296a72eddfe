"""Where an installer ISO keeps its kernel and initrd, and how to boot them directly.

Direct kernel boot (QEMU -kernel/-initrd/-append) needs three facts from the ISO:
the two paths and a kernel command line. They follow from the distribution's
layout, read from the ISO's directory listing (no mount, no extraction).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pim.engine.errors import InputError

if TYPE_CHECKING:
    from pim.engine.source.iso import IsoImage

# (kernel, initrd, family, arch or None when the layout is the same on every arch)
CANDIDATES: tuple[tuple[str, str, str, str | None], ...] = (
    ("/install.amd/vmlinuz", "/install.amd/initrd.gz", "debian", "x86_64"),  # Debian netinst/DVD
    ("/install.a64/vmlinuz", "/install.a64/initrd.gz", "debian", "aarch64"),
    ("/casper/vmlinuz", "/casper/initrd", "ubuntu", None),  # Ubuntu live-server
    ("/images/pxeboot/vmlinuz", "/images/pxeboot/initrd.img", "kickstart", None),  # RHEL, Rocky, Alma, Fedora
)

# Architecture words as distributions put them in volume ids (Rocky-9-4-x86_64-dvd,
# Ubuntu-Server 24.04.1 LTS arm64), then the removable-media EFI loader's name.
_ARCH_WORDS = (("x86_64", r"x86_64|amd64|x64"), ("aarch64", r"aarch64|arm64|a64"))
_EFI_LOADERS = (("x86_64", "/EFI/BOOT/BOOTX64.EFI"), ("aarch64", "/EFI/BOOT/BOOTAA64.EFI"))


@dataclass(frozen=True)
class Layout:
    kernel: str  # absolute path inside the ISO
    initrd: str
    params: str  # kernel command line, a Jinja template still holding install-time variables
    family_guess: str  # a key of families.FAMILIES
    volume_id: str  # the ISO's (primary) volume identifier
    arch: str | None  # x86_64 | aarch64, None if the ISO does not say


def detect(iso_path: Path) -> Layout:
    """The direct-boot layout of an installer ISO; InputError if it is not one PIM knows."""
    from pim.engine.source.iso import IsoImage

    with IsoImage(iso_path) as image:
        volume_id = image.volume_id
        for kernel, initrd, family, arch in CANDIDATES:
            if image.exists(kernel) and image.exists(initrd):
                arch = arch or _arch_from_volume(volume_id) or _arch_from_loader(image)
                return Layout(kernel, initrd, boot_params(family, volume_id, arch), family, volume_id, arch)
    looked = ", ".join(f"{k} + {i}" for k, i, _, _ in CANDIDATES)
    raise InputError(
        f"{iso_path.name} (volume {volume_id!r}) has none of the installer layouts PIM knows ({looked}); "
        "set installer.boot.kernel, initrd and params yourself"
    )


def boot_params(family: str, volume_id: str, arch: str | None) -> str:
    """The family's kernel command line with the ISO's facts filled in.

    Install-time variables ({{ answer_url }}, {{ hostname }}...) are left in place
    for the install stage to render; so is {{ serial_console }} when the ISO does
    not say its architecture.
    """
    import jinja2

    from pim.engine.installers import environment
    from pim.engine.installers.families import get

    class Keep(jinja2.Undefined):
        # Prints an unknown variable back as itself, so this render is partial.
        def __str__(self) -> str:
            return "{{ %s }}" % self._undefined_name

    known: dict[str, Any] = {"volume_id": volume_id}
    if arch:
        known["serial_console"] = "ttyAMA0" if arch == "aarch64" else "ttyS0"
    return environment(undefined=Keep).from_string(get(family).boot_params).render(**known)


def _arch_from_volume(volume_id: str) -> str | None:
    for arch, words in _ARCH_WORDS:
        if re.search(rf"(?<![A-Za-z0-9])(?:{words})(?![A-Za-z0-9])", volume_id, re.IGNORECASE):
            return arch
    return None


def _arch_from_loader(image: IsoImage) -> str | None:
    for arch, loader in _EFI_LOADERS:
        if image.exists(loader) or image.exists(loader.lower()):
            return arch
    return None
