"""The final stage: the provisioned disk flattened and compressed into the artifact.

Its key is the provision key plus the output options, so a change of
`output.compression` alone reruns only this stage, from the published provision
object.
"""

from __future__ import annotations

import time
from pathlib import Path

import pim
from pim.engine.pipeline.context import BuildContext
from pim.engine.pipeline.stage import StageOutput, StageResult
from pim.engine.qemu import img
from pim.engine.source.fetch import sha256_file
from pim.engine.store.manifest import Artifact


STAGE = "final"


def run_final(ctx: BuildContext, provision: StageOutput, disk: Path) -> StageResult:
    """Convert `provision`'s disk (and its backing chain) into one compressed qcow2 at `disk`.

    Returns the stage result carrying the artifact (sha256, sizes in bytes) and the
    manifest's spec, source and tool fields; raises CommandError when qemu-img fails.
    """
    started = time.monotonic()
    compression = img.resolve_compression(ctx.spec.output.compression.value)
    ctx.events.log(STAGE, f"flattening and compressing ({compression})")
    img.convert(provision.disk, disk, compression)
    artifact = Artifact(file=disk.name, sha256=sha256_file(disk), size=disk.stat().st_size,
                        virtual_size=img.info(disk)["virtual-size"], compression=compression)
    facts = {"seconds": round(time.monotonic() - started, 1), "compression": compression}
    extra = {
        "pim_version": pim.__version__,
        "source": {"iso": ctx.spec.source.iso, "sha256": ctx.iso_sha256},
        # The spec as given: pydantic's SecretStr masks secrets, the registry the rest.
        "inputs": ctx.events.redact_json(ctx.spec.model_dump(mode="json")),
        "tools": {"qemu-img": img.version(), "accel": ctx.accel, "builder": ctx.builder},
    }
    return StageResult(facts, uses={"provision": provision.key}, artifact=artifact, extra=extra)
