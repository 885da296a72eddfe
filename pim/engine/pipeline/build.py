"""A whole build: the stages run by one loop, each skipped when the store holds its
object, every object leased while the build uses it.

Entry points (all take the `Store` the front end chose; none reads the environment):
`content_keys` (keys only, never builds), `current_inputs` (keys and the named input
map), `explain_image` (why each stage would be built), `lookup` (a finished build or
None), `build` (builds what is missing), `image_outputs` (what IaC front ends show).
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pim.engine.config.spec import Config, ImageSpec
from pim.engine.errors import InputError
from pim.engine.events import Emitter
from pim.engine.pipeline import keys as keymod
from pim.engine.pipeline.context import BuildContext
from pim.engine.pipeline.stage import Stage, StageOutput, StageSkipped
from pim.engine.pipeline.stages import STAGES
from pim.engine.pipeline.finder import Finder, usable
from pim.engine.remote.s3 import Bucket
from pim.engine.source.fetch import resolve_iso
from pim.engine.store import manifest as manifests
from pim.engine.store.manifest import Manifest, StageRef
from pim.engine.store.objects import Store


@dataclass(frozen=True)
class BuildResult:
    """A finished build: the final qcow2 at `path`, `size` in bytes, `cached` when
    nothing had to be built, `builder` where it was built (`path` is on that builder
    when the artifact was left there)."""

    image: str
    key: str
    path: Path
    manifest_path: Path
    sha256: str
    size: int
    cached: bool
    builder: str = "local"
    kept_on_builder: bool = False  # `path` is on `builder`: the artifact was not fetched

    def manifest(self) -> Manifest:
        return manifests.read(self.manifest_path.parent)


def image_outputs(manifest_path: Path) -> dict[str, Any]:
    """What front ends show of a build (Pulumi outputs, Terraform attributes), all
    from its manifest: keys, path, sha256, sizes in bytes, format, arch, firmware,
    the SBOM's and the signed provenance's paths (None when the build has none) and
    the named inputs it was built from (`explain.input_digests`)."""
    m = manifests.read(manifest_path.parent)
    if m.artifact is None:
        raise manifests.ManifestError(f"{manifest_path} is a {m.stage} stage, not a built image")
    art = m.artifact
    return {
        "content_key": m.key,
        "stage_keys": m.stage_keys(),
        "path": str(manifest_path.parent / art.file),
        "sha256": art.sha256,
        "size": art.size,
        "virtual_size": art.virtual_size,
        "format": art.format,
        "compression": art.compression,
        "arch": m.arch,
        "firmware": m.firmware,
        "manifest_path": str(manifest_path),
        "created": m.created,
        "sbom_path": str(manifest_path.parent / m.sbom.file) if m.sbom else None,
        "provenance_path": str(manifest_path.parent / m.provenance.file) if m.provenance else None,
        "input_digests": dict(m.input_digests),
    }


def _iso_sha(cfg: Config, spec: ImageSpec, store: Store) -> str:
    if spec.source.is_url:  # the checksum in the spec stands for the ISO: nothing is downloaded
        assert spec.source.sha256 is not None
        return spec.source.sha256
    return resolve_iso(spec.source, cfg.base_dir, store.root, Emitter())[1]


def _keys(cfg: Config, spec: ImageSpec, name: str, iso_sha: str, store: Store,
          salt: bytes | None = None) -> keymod.StageKeys:
    from pim.engine.qemu import img

    compression = img.resolve_compression(spec.output.compression.value)
    return keymod.stage_keys(cfg, spec, iso_sha, store.root, name, compression=compression, salt=salt)


def content_keys(cfg: Config, name: str, store: Store) -> dict[str, str]:
    """{"install", "provision", "final": key} of an image without building or downloading.

    For a URL source the checksum in the spec stands for the ISO; a local ISO is
    hashed (memoized by its identity). This is what IaC previews and diffs call.
    Raises InputError (unknown image, unreadable file).
    """
    spec = cfg.image(name)
    return _keys(cfg, spec, name, _iso_sha(cfg, spec, store), store).as_dict()


def current_inputs(cfg: Config, name: str, store: Store) -> tuple[keymod.StageKeys, dict[str, str]]:
    """The image's stage keys (with the inputs each hashes) and its named input map
    (`explain.input_digests`), without building or downloading; as `content_keys`."""
    from pim.engine.pipeline.explain import input_digests

    spec = cfg.image(name)
    keys = _keys(cfg, spec, name, _iso_sha(cfg, spec, store), store)
    return keys, input_digests(spec, keys.inputs, keymod.store_salt(store.root))


def explain_image(cfg: Config, name: str, store: Store) -> list[Any]:
    """`explain.explain` for image `name` against the newest build of it in `store` (its
    ref): a `StageExplanation` per image stage. Looks at this store only (a stage the
    remote cache holds shows as to build) and builds and downloads nothing. Raises
    InputError (unknown image, unreadable file) as `content_keys` does."""
    from pim.engine.pipeline.explain import IMAGE_STAGES, explain, recorded_inputs

    keys, current = current_inputs(cfg, name, store)
    ref = store.get_ref(name)
    newest = ref["key"] if ref else None
    with contextlib.ExitStack() as held:
        cached = {s: usable(store, getattr(keys, s), held) is not None for s in IMAGE_STAGES}
    return explain(keys.as_dict(), current, recorded_inputs(store, newest) if newest else None, cached, newest)


def lookup(cfg: Config, name: str, store: Store) -> BuildResult | None:
    """The finished build for the image's current inputs, or None: never builds."""
    key = content_keys(cfg, name, store)["final"]
    return _result(store, name, key, cached=True, record=False) if store.has(key) else None


def build(cfg: Config, name: str, events: Emitter | None = None, *, store: Store, force: bool = False,
          builder: str = "local", remote: Bucket | None = None, max_jobs: int | None = None,
          secret_salt: bytes | None = None, path_names: dict[str, str] | None = None) -> BuildResult:
    """Build image `name` of `cfg` into `store`, reusing every cached stage.

    Events go to `events` (stage-begin/stage-end with `key` and `cached`, log,
    progress, warning). `force` rebuilds every stage. With a `remote` cache
    (`pim.engine.remote.open_remote`), a stage missing locally is pulled from it when
    it is there, and what the build produced is pushed to it (when its
    settings allow: each object as soon as it is published, while the build goes on);
    a remote that fails is a warning, never a failed build. With `max_jobs`, a build
    that has stages to run first takes one of that many slots of the store
    (`builders.slots`, shared with every PIM process on this machine) and waits for
    one while all are taken; a cache hit takes none. `secret_salt`: the salt for the
    keyed hash of the SSH password in the keys, when it is not this store's (a builder
    computes the keys of the client it builds for). `path_names` maps file paths of
    the spec to the paths the user wrote (a builder's context renames every file), for
    the names of the inputs the build records. Raises InputError for bad
    input, BuildError (InstallerFailed, ProvisionError, VMError, CommandError) when a
    stage fails; an interrupt (KeyboardInterrupt) unwinds the same way. Whatever
    happens, no QEMU, runtime file or scratch folder is left, and no unfinished
    object is published.
    """
    events = events or Emitter()
    spec = cfg.image(name)
    if spec.ssh.password is not None:  # masked in every event from the start, whichever stage runs
        events.add_secret(spec.ssh.password.get_secret_value())
    iso, iso_sha = resolve_iso(spec.source, cfg.base_dir, store.root, events)
    keys = _keys(cfg, spec, name, iso_sha, store, secret_salt)
    # No lock is held here: each stage takes its own key's lock in the loop and looks
    # again once it has it, so a concurrent build of the same image waits there and
    # then finds the stages published. Leases are held until the ref is written, so
    # gc never sees a new image unreferenced.
    # The finder is left before the leases are let go: an upload still running stops first.
    with contextlib.ExitStack() as held, Finder(store, remote, events) as finder:
        held.enter_context(store.lease(keys.final))
        if not force and finder.usable(keys.final, held) is not None:
            events.emit("stage-end", "final", "cache hit", cached=True, key=keys.final)
            result = _result(store, name, keys.final, cached=True)
        else:
            held.enter_context(store.lease(f"iso-{iso_sha}"))
            if max_jobs is not None:
                from pim.engine.builders.slots import slot

                held.enter_context(slot(store.root, max_jobs, lambda n: events.log(
                    None, f"waiting for a build slot on {builder}: all {n} taken by other builds")))
            from pim.engine.provenance.signing import signer

            from concurrent.futures import ThreadPoolExecutor

            from pim.engine.qemu import accel as accelmod

            # The signing key is checked while the accelerator probe's QEMUs run: a key that
            # cannot be made or read fails now, not after the build.
            with ThreadPoolExecutor(1, thread_name_prefix="signing-key") as pool:
                checked = pool.submit(signer)
                verdict = accelmod.choose(spec.arch.value, spec.accel.value)
                checked.result()
            events.log(None, f"accelerator: {verdict.accel} ({verdict.reason})")
            work = held.enter_context(store.workdir(name))
            ctx = BuildContext(cfg, spec, name, store, events, iso, iso_sha, keys, verdict.accel, work, builder,
                               path_names=dict(path_names or {}), secret_salt=secret_salt)
            outputs = run_stages(ctx, held, force, finder)
            result = _result(store, name, keys.final, cached=outputs["final"].cached)
        finder.finish(keys.final)
        return result


def _plan(ctx: BuildContext, held: contextlib.ExitStack, force: bool, finder: Finder) -> list[tuple[Stage, str, bool]]:
    """(stage, key, cached) for the stages this build needs, in pipeline order.

    Starting from the final stage, a stage that is not cached brings in the stages it
    needs (`Stage.needs`); a cached one needs nothing more. Every object named here is
    leased, with everything it is built on, before anything is decided about it.
    With `force` nothing counts as cached (and nothing is removed: a rebuilt object
    replaces the old one only once it is published).
    """
    store, by_name, planned = ctx.store, {s.name: s for s in STAGES}, {}

    def want(name: str) -> None:
        if name in planned:
            return
        stage = by_name[name]
        key = stage.key(ctx)
        if key is None:
            return
        held.enter_context(store.lease(key))
        planned[name] = (stage, key, not force and finder.usable(key, held) is not None)
        if not planned[name][2]:
            for dep in stage.needs:
                want(dep)

    want(STAGES[-1].name)
    return [planned[s.name] for s in STAGES if s.name in planned]


def run_stages(ctx: BuildContext, held: contextlib.ExitStack, force: bool = False,
               finder: Finder | None = None) -> dict[str, StageOutput]:
    """The build loop: run (or reuse) each planned stage in order and publish its object.

    Returns the published outputs by stage name. Leases taken on the way stay in
    `held` until the caller's ExitStack closes.
    """
    store, events = ctx.store, ctx.events
    outputs: dict[str, StageOutput] = {}
    lineage: dict[str, StageRef] = {}
    for stage, key, cached in _plan(ctx, held, force, finder or Finder(store, None, events)):
        with store.lock(key):
            cached = cached or (not force and usable(store, key, held) is not None)  # made meanwhile
            events.emit("stage-begin", stage.name, key=key, cached=cached)
            if not cached:
                if store.object(key).exists():  # stale (built on replaced objects) or forced
                    store.set_aside(key)
                try:
                    _run_one(ctx, stage, key, outputs, lineage)
                    if finder is not None:
                        finder.published(key)
                except StageSkipped as e:
                    if not stage.optional:
                        raise
                    shutil.rmtree(ctx.work / f"{stage.name}-out", ignore_errors=True)
                    events.warning(stage.name, str(e))
                    events.emit("stage-end", stage.name, "skipped", key=key, cached=False)
                    continue
            m = store.manifest(key)
            outputs[stage.name] = StageOutput(stage.name, key, store.object(key), m, cached)
            if stage.in_lineage:
                lineage[stage.name] = StageRef(key=key, allocated=m.facts.get("allocated"))
            events.emit("stage-end", stage.name, key=key, cached=cached)
    return outputs


def _run_one(ctx: BuildContext, stage: Stage, key: str, inputs: dict[str, StageOutput],
             lineage: dict[str, StageRef]) -> None:
    staging = ctx.work / f"{stage.name}-out"
    staging.mkdir()
    from pim.engine.store.writeback import Writeback

    with Writeback(staging):  # written out meanwhile: publishing fsyncs what little is left
        result = stage.run(ctx, staging, inputs)
    for earlier in inputs.values():  # a cached first stage still names its own lineage
        lineage.update({s: r for s, r in earlier.manifest.lineage.items() if s not in lineage})
    own = {**lineage, stage.name: StageRef(key=key, allocated=result.facts.get("allocated"))} \
        if stage.in_lineage else dict(lineage)
    stages: dict[str, dict[str, Any]] = {}
    for name, out in inputs.items():  # a cached stage brings the facts of the build that made it
        if out.cached:
            stages.update({s: {**f, "cached": True} for s, f in out.manifest.stages.items() if s not in stages})
        stages[name] = {**out.manifest.facts, "cached": out.cached}
    facts = ctx.events.redact_json(result.facts)
    ctx.store.publish(staging, Manifest(
        stage=stage.name, image=ctx.name, key=key, created=manifests.now(), iso=ctx.iso_sha256,
        uses=result.uses, uses_ids={s: inputs[s].manifest.id for s in result.uses if s in inputs}, lineage=own, facts=facts, stages={**stages, stage.name: facts}, artifact=result.artifact,
        **result.extra,
    ))


def _result(store: Store, name: str, key: str, cached: bool, record: bool = True) -> BuildResult:
    obj = store.object(key)
    m = store.manifest(key)
    if m.artifact is None:
        raise InputError(f"{key[:12]} is a {m.stage} stage, not a built image")
    if record:  # a build (or cache hit) is a use: newest build of the image, last used now
        (obj / "done").touch()
        store.set_ref(name, key, {"path": str(obj / m.artifact.file)})
    return BuildResult(name, key, obj / m.artifact.file, obj / manifests.FILE, m.artifact.sha256,
                       m.artifact.size, cached)
