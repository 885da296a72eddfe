"""A build in PIM's store without QEMU: what a finished `pim build` leaves (disk.qcow2,
manifest.json, the done marker), published under the key the engine computes for
the config. build() and lookup() then answer with a cache hit, as after a real build."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from pim.engine.config.spec import Config
from pim.engine.pipeline.build import current_inputs
from pim.engine.store.manifest import Artifact, Manifest, StageRef
from pim.engine.store.objects import Store


def seed_build(cfg: Config, name: str, cache: Path, disk: Path, virtual_size: int) -> str:
    store = Store(cache)
    stage_keys, digests = current_inputs(cfg, name, store)
    keys = stage_keys.as_dict()
    staging = store.root / "tmp" / f"seed-{keys['final'][:12]}"
    staging.mkdir()
    shutil.copyfile(disk, staging / "disk.qcow2")
    data = (staging / "disk.qcow2").read_bytes()
    spec = cfg.image(name)
    store.publish(staging, Manifest(
        pim_version="0.1.0", stage="final", image=name, key=keys["final"], created="2025-01-01T00:00:00+00:00",
        artifact=Artifact(sha256=hashlib.sha256(data).hexdigest(), size=len(data), virtual_size=virtual_size,
                          compression="zstd"),
        source={"iso": spec.source.iso}, lineage={s: StageRef(key=k) for s, k in keys.items()},
        inputs=spec.model_dump(mode="json"), input_digests=digests,
    ))
    return keys["final"]
