"""A build in PIM's store without QEMU: what a finished `pim build` leaves (disk.qcow2,
manifest.json, the done marker), published under the key the engine computes for
the config. build() and lookup() then answer with a cache hit, as after a real build."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from pim.engine.pipeline.build import content_keys
from pim.engine.config.spec import Config
from pim.engine.store.objects import Store


def seed_build(cfg: Config, name: str, cache: Path, disk: Path, virtual_size: int) -> str:
    store = Store(cache)  # first: it makes the cache's folders
    keys = content_keys(cfg, name, cache)
    staging = store.root / "tmp" / f"seed-{keys['final'][:12]}"
    staging.mkdir()
    shutil.copyfile(disk, staging / "disk.qcow2")
    data = (staging / "disk.qcow2").read_bytes()
    spec = cfg.image(name)
    manifest = {
        "pim_version": "0.1.0", "image": name, "key": keys["final"], "created": "2025-01-01T00:00:00+00:00",
        "artifact": {"file": "disk.qcow2", "format": "qcow2", "sha256": hashlib.sha256(data).hexdigest(),
                     "size": len(data), "virtual_size": virtual_size, "compression": "zstd"},
        "source": {"iso": spec.source.iso},
        "lineage": {"install": {"key": keys["install"]}, "provision": {"key": keys["provision"]},
                    "final": {"key": keys["final"]}},
        "stages": {}, "inputs": spec.model_dump(mode="json"), "tools": {},
    }
    import json

    (staging / "manifest.json").write_text(json.dumps(manifest))
    store.publish(staging, keys["final"])
    return keys["final"]
