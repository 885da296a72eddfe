"""The final stage: the provisioned disk flattened and compressed into the artifact,
with its SBOM and signed provenance beside it.

Its key is the provision key plus the output options, so a change of
`output.compression` alone reruns only this stage, from the published provision
object.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pim
from pim.engine.pipeline.context import BuildContext
from pim.engine.pipeline.stage import StageOutput, StageResult
from pim.engine.qemu import img
from pim.engine.source.fetch import sha256_file
from pim.engine.store.manifest import Artifact, Attachment, now
from pim.engine.timeline import Timeline


STAGE = "final"


def run_final(ctx: BuildContext, provision: StageOutput, disk: Path) -> StageResult:
    """Convert `provision`'s disk (and its backing chain) into one compressed qcow2 at
    `disk`, then write the SBOM (from the packages the provision stage read) and the
    signed provenance beside it.

    Returns the stage result carrying the artifact (sha256, sizes in bytes), the
    attachments and the manifest's spec, source and tool fields; raises
    CommandError when qemu-img fails, InputError when the signing key is unusable.
    """
    from pim.engine.pipeline.explain import input_digests

    started = time.monotonic()
    timeline = Timeline(ctx.events, STAGE)
    compression = img.resolve_compression(ctx.spec.output.compression.value)
    ctx.events.log(STAGE, f"flattening and compressing ({compression})")
    from pim.engine.provenance import sbom

    preload = threading.Thread(target=sbom.preload, name="sbom-preload", daemon=True)
    preload.start()  # while qemu-img runs
    img.convert(provision.disk, disk, compression)
    preload.join()
    timeline.mark(f"convert ({compression})")
    artifact = Artifact(file=disk.name, sha256=sha256_file(disk), size=disk.stat().st_size,
                        virtual_size=img.info(disk)["virtual-size"], compression=compression)
    timeline.mark("sha256")
    qemu = img.qemu_version(ctx.spec.arch.value)
    # The spec as given: pydantic's SecretStr masks secrets, the registry the rest.
    spec = ctx.events.redact_json(ctx.spec.model_dump(mode="json"))
    # masked as a backstop: every value is already a digest, a keyed hash or a short setting
    digests = ctx.events.redact_json(input_digests(ctx.spec, ctx.keys.inputs, ctx.salt, ctx.path_names))
    extra: dict[str, Any] = {
        "pim_version": pim.__version__,
        "source": {"iso": ctx.spec.source.iso, "sha256": ctx.iso_sha256},
        "inputs": spec,
        "tools": {"qemu-img": img.version(), "qemu": qemu, "accel": ctx.accel, "builder": ctx.builder},
        "input_digests": digests,
    }
    extra["sbom"] = _sbom(ctx, provision, disk.parent, artifact)
    extra["provenance"] = _provenance(ctx, disk.parent, artifact, spec, digests, qemu, extra["sbom"])
    timeline.mark("SBOM and provenance")
    facts = {"seconds": round(time.monotonic() - started, 1), "compression": compression, "phases": timeline.facts()}
    return StageResult(facts, uses={"provision": provision.key}, artifact=artifact, extra=extra)


def _masked_inputs(ctx: BuildContext) -> dict[str, Any]:
    """The stage inputs with the build's secrets masked where a user's own strings go
    (answer vars, env, a step's env and inline script). Everything else in them is a digest, a keyed
    hash or a setting, left exact so that a verifier can recompute the keys; masking
    a substring of a digest would only break that."""
    inputs = json.loads(json.dumps(ctx.keys.inputs))
    install, provision = inputs["install"], inputs["provision"]
    install["vars"] = ctx.events.redact_json(install.get("vars"))
    provision["env"] = ctx.events.redact_json(provision.get("env"))
    for step in provision.get("steps", []):
        for field in ("env", "inline"):
            if step.get(field) is not None:
                step[field] = ctx.events.redact_json(step[field])
    return inputs


def _sbom(ctx: BuildContext, provision: StageOutput, folder: Path, artifact: Artifact) -> Attachment | None:
    from pim.engine.provenance import sbom
    from pim.engine.provenance.packages import PackageList

    pkgs = PackageList.read(provision.path)
    if pkgs is None:
        ctx.events.warning(STAGE, "no SBOM: the provision stage recorded no package list")
        return None
    _, sha = sbom.write(folder, ctx.name, ctx.keys.final, artifact.sha256, ctx.spec.arch.value, pkgs)
    ctx.events.log(STAGE, f"SBOM: {len(pkgs.packages)} packages ({sbom.FILE})")
    return Attachment(file=sbom.FILE, sha256=sha, media_type=sbom.MEDIA_TYPE)


def _provenance(ctx: BuildContext, folder: Path, artifact: Artifact, spec: dict[str, Any],
                digests: dict[str, str], qemu: str, sbom: Attachment | None) -> Attachment:
    import hashlib

    from pim.engine.provenance import signing, statement

    byproducts = [{"name": sbom.file, "digest": {"sha256": sbom.sha256}, "mediaType": sbom.media_type}] if sbom else []
    doc = statement.build(
        image=ctx.name, key=ctx.keys.final, artifact=artifact.file, artifact_sha256=artifact.sha256,
        iso=ctx.events.redact(ctx.spec.source.iso), iso_sha256=ctx.iso_sha256, spec=spec,
        stage_keys=ctx.keys.as_dict(), stage_inputs=_masked_inputs(ctx), input_digests=digests,
        builder=ctx.builder, accel=ctx.accel, qemu=qemu, pim_version=pim.__version__,
        started=ctx.started, finished=now(), byproducts=byproducts)
    envelope = signing.sign(doc)
    data = (json.dumps(envelope, sort_keys=True) + "\n").encode()
    (folder / statement.FILE).write_bytes(data)
    ctx.events.log(STAGE, f"provenance signed ({statement.FILE})")
    return Attachment(file=statement.FILE, sha256=hashlib.sha256(data).hexdigest(), media_type=statement.MEDIA_TYPE)
