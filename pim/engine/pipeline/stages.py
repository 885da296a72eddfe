"""The build's stages as things: each has a name, computes its key, and runs into a
staging folder that the build loop publishes as a store object.

    install -> boot snapshot -> provision -> final

A stage's `run(ctx, staging, inputs)` gets the published outputs of the stages
before it (`inputs`, by stage name) and returns a `StageResult`: the facts it
recorded and the objects it is built on. The loop (`build.run_stages`) decides
what is cached, holds the locks and leases, writes the manifest and publishes.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pim.engine.errors import PimError
from pim.engine.guest.ssh import KeyPair
from pim.engine.pipeline import keys as keymod
from pim.engine.pipeline.context import BuildContext
from pim.engine.store.manifest import Artifact, Manifest

DISK = "disk.qcow2"


@dataclass(frozen=True)
class StageOutput:
    """A published stage object: its key, its folder and its manifest."""

    stage: str
    key: str
    path: Path  # objects/<key>/
    manifest: Manifest
    cached: bool

    @property
    def disk(self) -> Path:
        return self.path / DISK


@dataclass
class StageResult:
    """What a stage's run hands back to the loop for its manifest."""

    facts: dict[str, Any] = field(default_factory=dict)
    uses: dict[str, str] = field(default_factory=dict)  # stage name -> key of objects it is built on
    artifact: Artifact | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # further Manifest fields (inputs, tools, source)


class StageSkipped(PimError):
    """An optional stage could not produce its object; the build goes on without it."""


class Stage(Protocol):
    """One step of the pipeline (see the module docstring)."""

    name: str
    optional: bool  # a failure (StageSkipped) leaves the stage out instead of failing the build
    in_lineage: bool  # its key is part of the image's lineage (False: it never changes the bytes)

    def key(self, ctx: BuildContext) -> str | None:
        """The stage's content key, or None when this build does not use the stage."""

    def run(self, ctx: BuildContext, staging: Path, inputs: dict[str, StageOutput]) -> StageResult:
        """Produce the stage's files in `staging`; raise PimError on failure."""


def build_key(install: StageOutput) -> KeyPair:
    """The per-build SSH key pair the install stage authorized in the guest."""
    return KeyPair((install.path / "build_key").read_text(), (install.path / "build_key.pub").read_text().strip())


def copy_efivars(base: Path, staging: Path) -> None:
    """UEFI: each VM of the build gets its own copy of the variables store."""
    if (base / "efivars.fd").exists():
        shutil.copyfile(base / "efivars.fd", staging / "efivars.fd")


def allocated(path: Path) -> int:
    """Bytes a file occupies on disk."""
    return path.stat().st_blocks * 512


class InstallStage:
    name, optional, in_lineage = "install", False, True

    def key(self, ctx: BuildContext) -> str:
        return ctx.keys.install

    def run(self, ctx: BuildContext, staging: Path, inputs: dict[str, StageOutput]) -> StageResult:
        from pim.engine.pipeline.install import run_install

        key = KeyPair.generate(comment=f"pim-build-{ctx.keys.install[:12]}")
        facts = run_install(ctx, staging / DISK, key)
        _write_private(staging / "build_key", key.private_openssh)
        (staging / "build_key.pub").write_text(key.public_openssh + "\n")
        return StageResult({**facts, "allocated": allocated(staging / DISK)})


class BootStage:
    name, optional, in_lineage = "boot", True, False

    def key(self, ctx: BuildContext) -> str | None:
        if not ctx.spec.snapshot:
            return None
        from pim.engine.qemu import img

        return keymod.boot_key(ctx.spec, ctx.keys.install, ctx.accel, img.qemu_version(ctx.spec.arch.value))

    def run(self, ctx: BuildContext, staging: Path, inputs: dict[str, StageOutput]) -> StageResult:
        from pim.engine.pipeline.boot import snapshot

        install = inputs["install"]
        started = time.monotonic()
        try:
            facts = snapshot(ctx, install.path, staging, build_key(install))
        except PimError as e:  # an interrupt is no PimError: it ends the build
            raise StageSkipped(f"no booted snapshot ({e}); provisioning boots the guest instead") from e
        facts["seconds"] = round(time.monotonic() - started, 1)
        return StageResult(facts, uses={"install": install.key})


class ProvisionStage:
    name, optional, in_lineage = "provision", False, True

    def key(self, ctx: BuildContext) -> str:
        return ctx.keys.provision

    def run(self, ctx: BuildContext, staging: Path, inputs: dict[str, StageOutput]) -> StageResult:
        from pim.engine.pipeline.provision import run_provision

        base = inputs.get("boot") or inputs["install"]
        facts = run_provision(ctx, base.path, staging / DISK, build_key(inputs["install"]))
        facts["allocated"] = allocated(staging / DISK)
        return StageResult(facts, uses={base.stage: base.key})


class FinalStage:
    name, optional, in_lineage = "final", False, True

    def key(self, ctx: BuildContext) -> str:
        return ctx.keys.final

    def run(self, ctx: BuildContext, staging: Path, inputs: dict[str, StageOutput]) -> StageResult:
        from pim.engine.pipeline.final import run_final

        return run_final(ctx, inputs["provision"], staging / DISK)


STAGES: tuple[Stage, ...] = (InstallStage(), BootStage(), ProvisionStage(), FinalStage())


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
