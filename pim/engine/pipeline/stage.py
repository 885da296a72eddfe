"""What a stage is: the `Stage` protocol, its published output and its result, and
the small helpers the stage runners share.

A stage's `run(ctx, staging, inputs)` gets the published outputs of the stages
before it (`inputs`, by stage name) and returns a `StageResult`: the facts it
recorded and the objects it is built on. The loop (`build.run_stages`) decides
what is cached, holds the locks and leases, writes the manifest and publishes.
The stages themselves are in `stages.py`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pim.engine.errors import PimError
from pim.engine.pipeline.context import BuildContext
from pim.engine.store.manifest import Artifact, Manifest

if TYPE_CHECKING:
    from pim.engine.guest.ssh import KeyPair

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
    needs: tuple[str, ...]  # the stages whose objects its run reads (an optional one may be absent)

    def key(self, ctx: BuildContext) -> str | None:
        """The stage's content key, or None when this build does not use the stage."""

    def run(self, ctx: BuildContext, staging: Path, inputs: dict[str, StageOutput]) -> StageResult:
        """Produce the stage's files in `staging`; raise PimError on failure."""


def build_key(install: StageOutput) -> "KeyPair":
    """The per-build SSH key pair the install stage authorized in the guest."""
    from pim.engine.guest.ssh import KeyPair

    return KeyPair((install.path / "build_key").read_text(), (install.path / "build_key.pub").read_text().strip())


def copy_efivars(base: Path, staging: Path) -> None:
    """UEFI: each VM of the build gets its own copy of the variables store."""
    if (base / "efivars.fd").exists():
        shutil.copyfile(base / "efivars.fd", staging / "efivars.fd")


def allocated(path: Path) -> int:
    """Bytes a file occupies on disk."""
    return path.stat().st_blocks * 512
