"""What every stage of one build shares."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pim.engine.events import Emitter
from pim.engine.qemu.argv import RuntimeFiles, VmConfig
from pim.engine.config.spec import Config, ImageSpec

if TYPE_CHECKING:
    from pim.engine.services.pkgcache import PackageCache


@dataclass
class Job:
    cfg: Config
    spec: ImageSpec
    name: str
    iso: Path
    iso_sha256: str
    accel: str
    events: Emitter
    work: Path
    keys: dict[str, str]
    cache: Path  # the store's root; the package cache lives under it

    def package_cache(self) -> "PackageCache":
        from pim.engine.services.pkgcache import PackageCache

        return PackageCache(self.cache / "packages", self.events)

    def vm_config(self, stage: str, disk: Path, **overrides: Any) -> VmConfig:
        """The VM for one stage. UEFI builds keep their variables store in
        `efivars.fd` beside the disk, so boot entries the installer wrote survive."""
        if self.spec.firmware.value == "uefi" and "firmware" not in overrides:
            from pim.engine.qemu.firmware import for_vm

            overrides["firmware"] = for_vm(self.spec.arch.value, disk.parent / "efivars.fd")
        return VmConfig(
            name=self.name,
            disk=disk,
            serial_log=self.work / f"{stage}.serial.log",
            runtime=RuntimeFiles.for_name(self.name),
            arch=self.spec.arch.value,
            accel=self.accel,
            cpus=self.spec.cpus,
            memory_mib=self.spec.memory >> 20,
            **overrides,
        )

    @property
    def hostname(self) -> str:
        return hostname_for(self.name)


def hostname_for(image: str) -> str:
    """The build VM's host name: the image name made a valid host name."""
    return re.sub(r"[^a-z0-9-]", "-", image)[:63].strip("-") or "pim"


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for QEMU's SSH forward."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
