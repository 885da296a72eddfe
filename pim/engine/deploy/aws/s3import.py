"""The S3 + import-snapshot path, for accounts that do not allow the EBS direct APIs.

The raw disk is streamed into a multipart S3 upload part by part (S3 objects are
not sparse, so zeros are sent here, unlike the direct path), then ImportSnapshot
turns it into an EBS snapshot. The task is polled to a final state with a
deadline; the S3 object is removed whatever happened.

ImportSnapshot carries a ClientToken (a new one per import), so botocore's retry of a
call whose answer was lost does not start a second, untracked import. Its
TagSpecifications tag the import task: EC2 tags only the task at birth, not the
snapshot it makes (EC2 API Reference, ImportSnapshot: "The tags to apply to the
import snapshot task during creation"), so the snapshot is tagged by CreateTags when
the task completes, retried under EC2_VISIBLE, and deleted if it cannot be tagged
(an untagged snapshot is one cleanup_orphans could never find).
"""

from __future__ import annotations

import uuid
from typing import Any

from pim.engine.deploy.aws.blocks import open_raw
from pim.engine.deploy.aws.common import (
    Clients, checksum, cleaning_up, delete_snapshot, failing_as, not_found, tag_list, tags_for, transient,
)
from pim.engine.deploy.model import BuiltImage, DeployError
from pim.engine.deploy.spec import AwsTarget
from pim.engine.errors import WaitTimeout
from pim.engine.events import Emitter
from pim.engine.retry import EC2_VISIBLE, retrying
from pim.engine.wait import until

MIB = 1 << 20
MAX_PARTS = 10_000
POLL_DELAY = 1.0  # first wait between task polls; grows to 15 s
# Task statuses that end the poll as a failure. botocore's snapshot_imported waiter
# fails on "error" (its waiters-2 model); "deleting"/"deleted" is a cancelled or failed task.
FAILED = ("error", "deleting", "deleted")


def part_size(total: int) -> int:
    """8 MiB parts (memory stays small) unless S3's 10,000-part limit needs bigger ones."""
    need = -(-total // MAX_PARTS)
    return max(8 * MIB, -(-need // MIB) * MIB)


def object_key(target: AwsTarget, image: BuiltImage) -> str:
    return f"{target.s3_prefix}{image.name}-{image.key[:16]}.raw"


def upload_import(clients: Clients, target: AwsTarget, image: BuiltImage, events: Emitter) -> tuple[str, dict]:
    """Stream the raw disk to s3://target.s3_bucket, import it as a snapshot; returns (snapshot id, stats).

    stats as upload_direct's (bytes_sent: the whole raw disk, zeros included). Raises
    DeployError naming the S3 or EC2 call that failed; the S3 object is deleted
    whatever happened (a failure to delete it is a warning only).
    """
    s3, ec2 = clients.get("s3", target.region), clients.get("ec2", target.region)
    bucket, key = target.s3_bucket, object_key(target, image)
    assert bucket and image.path is not None
    with open_raw(image.path) as disk:
        _upload_object(s3, bucket, key, disk, events)
        stats = disk.stats.to_json() | {"bytes_sent": disk.size}
    try:
        sid = import_snapshot(ec2, bucket, key, image, target, events)
    finally:
        try:
            s3.delete_object(Bucket=bucket, Key=key)
        except Exception as e:  # the snapshot matters more than a leftover object; say so
            events.warning("upload", f"could not delete s3://{bucket}/{key}: {e}")
    return sid, stats


def _upload_object(s3: Any, bucket: str, key: str, disk: Any, events: Emitter) -> None:
    size = part_size(disk.size)
    with failing_as("S3 CreateMultipartUpload"):
        upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256")["UploadId"]
    parts = []
    try:
        for number, offset in enumerate(range(0, disk.size, size), start=1):
            data = disk.read(offset, min(size, disk.size - offset))
            digest = checksum(data)
            with failing_as(f"S3 UploadPart {number}"):
                etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data,
                                      ChecksumSHA256=digest)["ETag"]
            parts.append({"PartNumber": number, "ETag": etag, "ChecksumSHA256": digest})
            events.progress("upload", offset + size, disk.size, "bytes to S3")
        with failing_as("S3 CompleteMultipartUpload"):
            s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id,
                                         MultipartUpload={"Parts": parts})
    except BaseException as e:
        cleaning_up(e, f"S3 AbortMultipartUpload of s3://{bucket}/{key}",
                    lambda: s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id), events)
        raise


class _NotVisible(Exception):
    """DescribeImportSnapshotTasks does not list the task (yet)."""


def import_snapshot(ec2: Any, bucket: str, key: str, image: BuiltImage, target: AwsTarget, events: Emitter) -> str:
    """Run ImportSnapshot to a final state and tag its snapshot; returns the snapshot id.

    Polls DescribeImportSnapshotTasks every 1 s growing to 15 s, up to
    target.task_timeout seconds (then CancelImportTask). A poll that fails
    transiently (common.transient), or does not list the new task yet, is tried
    again under EC2_VISIBLE (10 tries, 90 s). Raises DeployError with AWS's reason
    when the task ends in `error`, `deleting` or `deleted`, when the time runs out,
    or naming the call that failed for good.
    """
    with failing_as("ImportSnapshot"):
        task = ec2.import_snapshot(
            Description=f"PIM {image.name} {image.key[:16]}",
            DiskContainer={"Description": image.name, "Format": "RAW",
                           "UserBucket": {"S3Bucket": bucket, "S3Key": key}},
            TagSpecifications=[{"ResourceType": "import-snapshot-task", "Tags": tag_list(tags_for(image, target))}],
            ClientToken=f"pim-{uuid.uuid4()}",  # one per import; botocore's retries resend it
        )
    task_id = task["ImportTaskId"]
    last: dict[str, Any] = {}

    def describe() -> dict[str, Any]:
        tasks = ec2.describe_import_snapshot_tasks(ImportTaskIds=[task_id])["ImportSnapshotTasks"]
        if not tasks:
            raise _NotVisible(f"DescribeImportSnapshotTasks does not list {task_id}")
        return dict(tasks[0]["SnapshotTaskDetail"])

    # Not botocore's snapshot_imported waiter: it does not stop on a deleted task, and
    # the task's progress is worth reporting at every poll.
    def finished() -> str | None:
        try:
            with failing_as(f"DescribeImportSnapshotTasks {task_id}"):
                detail = retrying(EC2_VISIBLE, describe, what=f"DescribeImportSnapshotTasks {task_id}",
                                  transient=lambda e: isinstance(e, _NotVisible) or transient(e),
                                  log=lambda line: events.log("upload", line))
        except _NotVisible:
            detail = {"Status": "deleted", "StatusMessage": "task vanished"}
        last.update(detail)
        status = detail.get("Status", "")
        if status == "completed":
            return str(detail["SnapshotId"])
        if status in FAILED:
            raise DeployError(f"ImportSnapshot {task_id} failed ({status}): "
                              f"{detail.get('StatusMessage', 'no reason given')}")
        events.log("upload", f"import {task_id}: {status} {detail.get('Progress', '')}% "
                             f"{detail.get('StatusMessage', '')}")
        return None

    try:
        sid = until(finished, what=f"ImportSnapshot {task_id}", timeout=target.task_timeout, interval=POLL_DELAY,
                    backoff=1.5, max_interval=15.0)
    except WaitTimeout:
        late = DeployError(f"ImportSnapshot {task_id} did not finish within {target.task_timeout:.0f} s "
                           f"(last: {last.get('Status', '')} {last.get('Progress', '')}%)")
        cleaning_up(late, f"CancelImportTask {task_id}",
                    lambda: ec2.cancel_import_task(ImportTaskId=task_id, CancelReason="pim: deadline passed"), events)
        raise late from None
    tag_imported(ec2, sid, tag_list(tags_for(image, target)), events)
    return sid


def tag_imported(ec2: Any, sid: str, tags: list[dict[str, str]], events: Emitter) -> None:
    """CreateTags on the snapshot an import just made, so cleanup_orphans can find it.

    An InvalidSnapshot.NotFound (not visible yet) or a transient error is tried again
    under EC2_VISIBLE (10 tries, 90 s). When it fails for good the snapshot is deleted
    (an untagged snapshot would be lost to PIM) and DeployError is raised naming CreateTags.
    """
    try:
        with failing_as(f"CreateTags on imported snapshot {sid}"):
            retrying(EC2_VISIBLE, lambda: ec2.create_tags(Resources=[sid], Tags=tags), what=f"CreateTags {sid}",
                     transient=lambda e: not_found(e) or transient(e), log=lambda line: events.log("upload", line))
    except BaseException as e:
        cleaning_up(e, f"DeleteSnapshot {sid}", lambda: delete_snapshot(ec2, sid), events)
        raise
