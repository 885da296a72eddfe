"""The snapshot written with the EBS direct APIs, straight from the qcow2 read as raw blocks.

Zero blocks are never sent; blocks go in parallel (bounded, so memory stays
constant) with SHA-256 checksums. botocore retries each call (common.py); a
snapshot left by a failed upload is deleted.
"""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from pim.engine.deploy.aws.blocks import EBS_BLOCK, ReadStats, open_raw
from pim.engine.deploy.aws.common import (
    Clients, checksum, delete_snapshot, failing_as, tag_list, tags_for, volume_gib, wait_for,
)
from pim.engine.deploy.model import BuiltImage
from pim.engine.deploy.spec import AwsTarget
from pim.engine.events import Emitter


def upload_direct(clients: Clients, target: AwsTarget, image: BuiltImage, events: Emitter) -> tuple[str, dict]:
    """Write the disk into a new EBS snapshot block by block; returns (snapshot id, stats).

    Waits (up to target.task_timeout seconds) for the snapshot to complete. Raises
    DeployError; nothing is left behind on failure or interrupt.
    """
    ebs = clients.get("ebs", target.region)
    assert image.path is not None
    with open_raw(image.path) as disk:
        with failing_as("StartSnapshot"):
            snap = ebs.start_snapshot(VolumeSize=volume_gib(disk.size), Tags=tag_list(tags_for(image, target)),
                                      Description=f"PIM {image.name} {image.key[:16]}", Timeout=60)
        sid = snap["SnapshotId"]
        events.log("upload", f"writing {disk.size >> 20} MiB into {sid} ({target.region})")
        try:
            sent = _put_blocks(ebs, sid, disk, target.parallel, events)
            with failing_as("CompleteSnapshot"):
                ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=sent)
            wait_snapshot(clients.get("ec2", target.region), sid, target.task_timeout)
        except BaseException:
            delete_snapshot(clients.get("ec2", target.region), sid)
            raise
        stats = disk.stats.to_json() | {"bytes_sent": sent * EBS_BLOCK}
    return sid, stats


def _put_blocks(ebs: Any, sid: str, disk: Any, parallel: int, events: Emitter) -> int:
    stats: ReadStats = disk.stats
    total = -(-disk.size // EBS_BLOCK)
    inflight: set[Future[None]] = set()
    sent = 0

    def put(index: int, data: bytes) -> None:
        with failing_as(f"PutSnapshotBlock {index}"):
            ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=index, BlockData=data, DataLength=len(data),
                                   Checksum=checksum(data), ChecksumAlgorithm="SHA256")

    def reap(block: bool) -> None:
        nonlocal inflight, sent
        done, inflight = wait(inflight, return_when=FIRST_COMPLETED) if block else (set(), inflight)
        for f in done:
            f.result()  # raises the first failure; the executor's exit waits for the rest
            sent += 1

    last = 0.0
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="pim-ebs") as pool:
        try:
            for index, data in disk.blocks(EBS_BLOCK):
                while len(inflight) >= parallel + 2:  # bounded: memory stays constant
                    reap(True)
                inflight.add(pool.submit(put, index, data))
                if time.monotonic() - last > 0.5:
                    events.progress("upload", index + 1, total, "blocks")
                    last = time.monotonic()
            while inflight:
                reap(True)
        except BaseException:
            for f in inflight:
                f.cancel()
            raise
    events.progress("upload", total, total, f"blocks ({stats.blocks_zero} zero blocks skipped)")
    return sent


def wait_snapshot(ec2: Any, sid: str, timeout: float) -> None:
    """botocore's snapshot_completed waiter; DeployError if the snapshot fails or times out (seconds)."""
    wait_for(ec2, "snapshot_completed", f"snapshot {sid}", timeout, SnapshotIds=[sid])
