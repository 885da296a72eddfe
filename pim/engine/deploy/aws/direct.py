"""The snapshot written with the EBS direct APIs, straight from the qcow2 read as raw blocks.

Zero blocks are never sent; blocks go in parallel (bounded, so memory stays
constant) with SHA-256 checksums. botocore retries each call (common.py), and each
block's PutSnapshotBlock is tried again, whole, under the EBS_BLOCK policy while its
error is transient (an outage longer than botocore's retries); the first block that
fails for good stops the others. A snapshot left by a failed upload is deleted.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from pim.engine.deploy.aws.blocks import EBS_BLOCK, ReadStats, open_raw
from pim.engine.deploy.aws.common import (
    Clients, checksum, cleaning_up, delete_snapshot, failing_as, tag_list, tags_for, transient, volume_gib, wait_for,
)
from pim.engine.deploy.model import BuiltImage
from pim.engine.deploy.spec import AwsTarget
from pim.engine.events import Emitter
from pim.engine.retry import EBS_BLOCK as BLOCK_RETRY  # the policy (EBS_BLOCK here is the block size)
from pim.engine.retry import retrying


def upload_direct(clients: Clients, target: AwsTarget, image: BuiltImage, events: Emitter) -> tuple[str, dict]:
    """Write the disk into a new EBS snapshot block by block; returns (snapshot id, stats).

    Waits (up to target.task_timeout seconds) for the snapshot to complete. Raises
    DeployError naming the call that failed; nothing is left behind on failure or
    interrupt (a snapshot that cannot be deleted then is a warning, and the first
    error is still the one raised). Retries: botocore's per call, and EBS_BLOCK
    (pim.engine.retry) per block on top of them.
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
        except BaseException as e:
            cleaning_up(e, f"DeleteSnapshot {sid}", lambda: delete_snapshot(clients.get("ec2", target.region), sid),
                        events)
            raise
        stats = disk.stats.to_json() | {"bytes_sent": sent * EBS_BLOCK}
    return sid, stats


class _Stopped(Exception):
    """Another block failed for good (or the upload was interrupted): no more tries."""


def _put_blocks(ebs: Any, sid: str, disk: Any, parallel: int, events: Emitter) -> int:
    stats: ReadStats = disk.stats
    total = -(-disk.size // EBS_BLOCK)
    inflight: set[Future[None]] = set()
    sent = 0
    stop = threading.Event()  # set when the upload has failed: blocks still waiting to retry give up

    def put(index: int, data: bytes) -> None:
        def attempt() -> None:
            if stop.is_set():
                raise _Stopped(f"PutSnapshotBlock {index}: the upload stopped")
            ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=index, BlockData=data, DataLength=len(data),
                                   Checksum=checksum(data), ChecksumAlgorithm="SHA256")

        with failing_as(f"PutSnapshotBlock {index}"):
            retrying(BLOCK_RETRY, attempt, transient=transient, what=f"PutSnapshotBlock {index}",
                     log=lambda line: events.log("upload", line), sleep=stop.wait)

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
            stop.set()
            for f in inflight:
                f.cancel()
            raise
    events.progress("upload", total, total, f"blocks ({stats.blocks_zero} zero blocks skipped)")
    return sent


def wait_snapshot(ec2: Any, sid: str, timeout: float) -> None:
    """botocore's SnapshotCompleted waiter, waiting out InvalidSnapshot.NotFound (common.wait_for).

    timeout: seconds. Raises DeployError if the snapshot reaches `error`, is not
    completed in time, or DescribeSnapshots fails for good.
    """
    wait_for(ec2, "SnapshotCompleted", f"snapshot {sid}", timeout, SnapshotIds=[sid])
