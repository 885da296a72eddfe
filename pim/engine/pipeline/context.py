"""What every stage of one build is given: the build context.

Everything a stage needs travels here explicitly, never through the environment:
the store (and so the cache location, decided by the front end), the event
emitter with its secrets registry, the verified ISO, the stage keys, the
accelerator verdict, the build's private work directory and where it runs.
A context exists only once all of these are known: there is no half-built one.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pim.engine.config.spec import Config, ImageSpec
from pim.engine.events import Emitter
from pim.engine.pipeline.keys import StageKeys
from pim.engine.qemu.argv import RuntimeFiles, VmConfig
from pim.engine.store.manifest import now
from pim.engine.store.objects import Store

if TYPE_CHECKING:
    from pim.engine.services.pkgcache import PackageCache


@dataclass(frozen=True)
class BuildContext:
    """One build of image `name`.

    `accel` is the accelerator verdict ("kvm", "hvf", "tcg"); `work` a scratch
    folder owned by this build and removed when it ends; `builder` names where the
    build runs ("local" for this host).
    """

    cfg: Config
    spec: ImageSpec
    name: str
    store: Store
    events: Emitter
    iso: Path
    iso_sha256: str
    keys: StageKeys
    accel: str
    work: Path
    builder: str = "local"
    started: str = field(default_factory=now)  # when the build began (UTC, ISO 8601), for its provenance
    path_names: dict[str, str] = field(default_factory=dict)  # spec path -> as the user wrote it (remote builds)
    secret_salt: bytes | None = None  # the salt of keyed hashes when it is not the store's (a builder's client's)

    @property
    def salt(self) -> bytes:
        """The salt of the build's keyed hashes: the client's for a remote build, else the store's."""
        from pim.engine.pipeline.keys import store_salt

        return self.secret_salt if self.secret_salt is not None else store_salt(self.store.root)

    def package_cache(self) -> "PackageCache":
        """The package cache proxy guests download through (kept in the store)."""
        from pim.engine.services.pkgcache import PackageCache

        return PackageCache(self.store.root / "packages", self.events)

    def vm_config(self, stage: str, disk: Path, **overrides: Any) -> VmConfig:
        """The VM for one stage. UEFI builds keep their variables store in
        `efivars.fd` beside the disk, so boot entries the installer wrote survive.

        The disk is a staging file: a crashed build discards it, and the store fsyncs
        every file it publishes. So QEMU skips the host fsync each guest flush asks for
        (cache=unsafe; QEMU still writes everything out when it exits). The bytes are
        the same; measured on the fixture under TCG here: the install 0.7 s shorter
        (its final sync), the boot to sshd unchanged (three boots each of a disk with
        its host keys: 20.4-22.4 s with QEMU's default, 22.8-23.1 s with unsafe)."""
        if self.spec.firmware.value == "uefi" and "firmware" not in overrides:
            from pim.engine.qemu.firmware import for_vm

            overrides["firmware"] = for_vm(self.spec.arch.value, disk.parent / "efivars.fd")
        from pim.engine.qemu.argv import cpu_model, machine_type
        from pim.engine.qemu.img import qemu_release

        arch, qemu = self.spec.arch.value, qemu_release(self.spec.arch.value)  # cached per arch
        if "cpu" not in overrides:
            overrides["cpu"] = cpu_model(arch, self.accel, qemu)
        if "machine" not in overrides:
            overrides["machine"] = machine_type(arch, self.accel, qemu, self.spec.memory >> 20)
        overrides.setdefault("disk_cache", "unsafe")
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
    def password(self) -> str | None:
        """The SSH password of the build user, if the spec sets one (a secret)."""
        return self.spec.ssh.password.get_secret_value() if self.spec.ssh.password else None

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
