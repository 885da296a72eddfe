"""A whole build: source -> install -> provision -> finalize, each stage keyed by its
inputs and skipped when the store already has its output."""

from __future__ import annotations

import datetime
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pim
from pim.engine.pipeline import keys as keymod
from pim.engine.events import Emitter
from pim.engine.pipeline.context import Job
from pim.engine.paths import cache_dir
from pim.engine.qemu import accel as accelmod
from pim.engine.qemu import img
from pim.engine.source.fetch import resolve_iso, sha256_file
from pim.engine.config.spec import Config
from pim.engine.store.objects import Store


@dataclass(frozen=True)
class BuildResult:
    image: str
    key: str
    path: Path  # the final qcow2
    manifest_path: Path
    sha256: str
    size: int
    cached: bool

    def manifest(self) -> dict[str, Any]:
        return json.loads(self.manifest_path.read_text())


def plan(cfg: Config, name: str, events: Emitter, cache: Path | None = None) -> tuple[Job, Store]:
    """Everything up to the first QEMU start: verified source, keys, accelerator."""
    spec = cfg.image(name)
    cache = cache or cache_dir()
    iso, iso_sha = resolve_iso(spec.source, cfg.base_dir, cache, events)
    stage_keys = keymod.stage_keys(cfg, spec, iso_sha, cache)
    job = Job(cfg, spec, name, iso, iso_sha, spec.accel.value, events, Path("/nonexistent"), stage_keys, cache)
    return job, Store(cache)


def image_outputs(manifest_path: Path) -> dict[str, Any]:
    """What front ends show of a build (Pulumi outputs, Terraform attributes): all from its manifest."""
    m = json.loads(manifest_path.read_text())
    art, inputs, lineage = m["artifact"], m.get("inputs", {}), m.get("lineage", {})
    return {
        "content_key": m["key"],
        "stage_keys": {stage: lineage[stage]["key"] for stage in ("install", "provision", "final") if stage in lineage},
        "path": str(manifest_path.parent / art.get("file", "disk.qcow2")),
        "sha256": art["sha256"],
        "size": art["size"],
        "virtual_size": art.get("virtual_size"),
        "format": art.get("format", "qcow2"),
        "compression": art.get("compression"),
        "arch": inputs.get("arch", "x86_64"),
        "firmware": inputs.get("firmware", "bios"),
        "manifest_path": str(manifest_path),
        "created": m.get("created"),
    }


def content_keys(cfg: Config, name: str, cache: Path | None = None) -> dict[str, str]:
    """The stage keys of an image without building or downloading anything.

    For a URL source the checksum in the spec stands for the ISO; a local ISO is
    hashed (memoized by its identity). This is what IaC previews and diffs call.
    """
    spec = cfg.image(name)
    cache = cache or cache_dir()
    if spec.source.is_url:
        assert spec.source.sha256 is not None
        iso_sha = spec.source.sha256
    else:
        iso_sha = resolve_iso(spec.source, cfg.base_dir, cache, Emitter())[1]
    return keymod.stage_keys(cfg, spec, iso_sha, cache)


def lookup(cfg: Config, name: str, cache: Path | None = None) -> BuildResult | None:
    """The finished build for the image's current inputs, or None: never builds."""
    store = Store(cache or cache_dir())
    key = content_keys(cfg, name, store.root)["final"]
    return _result(store, name, key, cached=True, record=False) if store.has(key) else None


def build(cfg: Config, name: str, events: Emitter | None = None, *, force: bool = False,
          cache: Path | None = None) -> BuildResult:
    events = events or Emitter()
    job, store = plan(cfg, name, events, cache)
    final_key = job.keys["final"]
    if not force and store.has(final_key):
        events.emit("stage-end", "final", "cache hit", cached=True, key=final_key)
        return _result(store, name, final_key, cached=True)
    with store.lock(final_key):
        if not force and store.has(final_key):  # built by a concurrent build while we waited
            events.emit("stage-end", "final", "cache hit (built concurrently)", cached=True, key=final_key)
            return _result(store, name, final_key, cached=True)
        verdict = accelmod.choose(job.spec.arch.value, job.spec.accel.value)
        job.accel = verdict.accel
        events.log(None, f"accelerator: {verdict.accel} ({verdict.reason})")
        with store.workdir(name) as work:
            job.work = work
            return _run_stages(job, store, force, verdict.accel)


def _run_stages(job: Job, store: Store, force: bool, accel: str) -> BuildResult:
    from pim.engine.pipeline.boot import ensure_booted
    from pim.engine.pipeline.install import run_install
    from pim.engine.pipeline.provision import run_provision
    from pim.engine.guest.ssh import KeyPair

    events, spec = job.events, job.spec
    timings: dict[str, Any] = {}

    install_key = job.keys["install"]
    with store.lock(install_key):
        cached = store.has(install_key) and not force
        events.emit("stage-begin", "install", key=install_key, cached=cached)
        if not cached:
            staging = job.work / "install-out"
            staging.mkdir()
            key = KeyPair.generate(comment=f"pim-build-{install_key[:12]}")
            facts = run_install(job, staging / "disk.qcow2", key)
            _write_private(staging / "build_key", key.private_openssh)
            (staging / "build_key.pub").write_text(key.public_openssh + "\n")
            (staging / "stage.json").write_text(
                json.dumps({"stage": "install", "image": job.name, "key": install_key, **facts})
            )
            store.publish(staging, install_key)
            timings["install"] = facts
        else:
            timings["install"] = {"cached": True}
        events.emit("stage-end", "install", key=install_key, cached=cached)
    install_dir = store.object(install_key)
    key = KeyPair((install_dir / "build_key").read_text(), (install_dir / "build_key.pub").read_text().strip())
    t0 = time.monotonic()
    booted = ensure_booted(job, store, install_dir, key) if job.spec.snapshot else None
    timings["boot"] = {"seconds": round(time.monotonic() - t0, 1), "snapshot": booted is not None}

    events.emit("stage-begin", "provision", key=job.keys["provision"])
    overlay = job.work / "provision.qcow2"
    timings["provision"] = run_provision(job, booted or install_dir, overlay, key)
    events.emit("stage-end", "provision", key=job.keys["provision"])

    events.emit("stage-begin", "final", key=job.keys["final"])
    t0 = time.monotonic()
    staging = job.work / "final-out"
    staging.mkdir()
    compression = img.resolve_compression(spec.output.compression.value)
    events.log("final", f"flattening and compressing ({compression})")
    img.convert(overlay, staging / "disk.qcow2", compression)
    digest = sha256_file(staging / "disk.qcow2")
    timings["final"] = {"seconds": round(time.monotonic() - t0, 1), "compression": compression}
    manifest = _manifest(job, store, staging / "disk.qcow2", digest, overlay, timings, accel)
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
    store.publish(staging, job.keys["final"])
    events.emit("stage-end", "final", key=job.keys["final"])
    return _result(store, job.name, job.keys["final"], cached=False)


def _manifest(job: Job, store: Store, disk: Path, digest: str, overlay: Path, timings: dict[str, Any],
              accel: str) -> dict[str, Any]:
    info = img.info(disk)
    install_disk = store.object(job.keys["install"]) / "disk.qcow2"
    return {
        "pim_version": pim.__version__,
        "image": job.name,
        "key": job.keys["final"],
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "artifact": {
            "file": "disk.qcow2",
            "format": "qcow2",
            "sha256": digest,
            "size": disk.stat().st_size,
            "virtual_size": info["virtual-size"],
            "compression": timings["final"]["compression"],
        },
        "source": {"iso": job.spec.source.iso, "sha256": job.iso_sha256},
        "lineage": {
            "iso": job.iso_sha256,
            "install": {"key": job.keys["install"], "allocated": install_disk.stat().st_blocks * 512},
            "provision": {"key": job.keys["provision"], "allocated": overlay.stat().st_blocks * 512},
            "final": {"key": job.keys["final"]},
        },
        "stages": timings,
        # The spec as given, secrets masked by pydantic's SecretStr.
        "inputs": job.spec.model_dump(mode="json"),
        "tools": {"qemu-img": img.version(), "accel": accel},
    }


def _result(store: Store, name: str, key: str, cached: bool, record: bool = True) -> BuildResult:
    obj = store.object(key)
    manifest = json.loads((obj / "manifest.json").read_text())
    if record:  # a build (or cache hit) is a use: newest build of the image, last used now
        (obj / "done").touch()
        store.set_ref(name, key, {"path": str(obj / "disk.qcow2")})
    return BuildResult(name, key, obj / "disk.qcow2", obj / "manifest.json",
                       manifest["artifact"]["sha256"], manifest["artifact"]["size"], cached)


def _write_private(path: Path, text: str) -> None:
    import os

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
