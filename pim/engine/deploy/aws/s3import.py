"""The S3 + import-snapshot path, for accounts that do not allow the EBS direct APIs.

The raw disk is streamed into a multipart S3 upload part by part (S3 objects are
not sparse, so zeros are sent here, unlike the direct path), then ImportSnapshot
turns it into an EBS snapshot. The task is polled to a final state with a
deadline; the S3 object is removed whatever happened.
"""

from __future__ import annotations

from typing import Any

from pim.engine.deploy.aws.blocks import open_raw
from pim.engine.deploy.aws.common import Clients, checksum, failing_as, tag_list, tags_for
from pim.engine.deploy.model import BuiltImage, DeployError
from pim.engine.deploy.spec import AwsTarget
from pim.engine.errors import WaitTimeout
from pim.engine.events import Emitter
from pim.engine.wait import until

MIB = 1 << 20
MAX_PARTS = 10_000
POLL_DELAY = 1.0  # first wait between task polls; grows to 15 s


def part_size(total: int) -> int:
    """8 MiB parts (memory stays small) unless S3's 10,000-part limit needs bigger ones."""
    need = -(-total // MAX_PARTS)
    return max(8 * MIB, -(-need // MIB) * MIB)


def object_key(target: AwsTarget, image: BuiltImage) -> str:
    return f"{target.s3_prefix}{image.name}-{image.key[:16]}.raw"


def upload_import(clients: Clients, target: AwsTarget, image: BuiltImage, events: Emitter) -> tuple[str, dict]:
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
        s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})
    except BaseException:
        try:
            s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        except Exception:
            pass
        raise


def import_snapshot(ec2: Any, bucket: str, key: str, image: BuiltImage, target: AwsTarget, events: Emitter) -> str:
    """Run ImportSnapshot to a final state; returns the snapshot id or raises with AWS's reason."""
    task = ec2.import_snapshot(
        Description=f"PIM {image.name} {image.key[:16]}",
        DiskContainer={"Description": image.name, "Format": "RAW", "UserBucket": {"S3Bucket": bucket, "S3Key": key}},
        TagSpecifications=[{"ResourceType": "import-snapshot-task", "Tags": tag_list(tags_for(image, target))}],
    )
    task_id = task["ImportTaskId"]
    last: dict[str, Any] = {}

    # No botocore waiter fits: snapshot_imported does not stop on a deleted task, and the
    # task's progress is worth reporting at every poll.
    def finished() -> str | None:
        tasks = ec2.describe_import_snapshot_tasks(ImportTaskIds=[task_id])["ImportSnapshotTasks"]
        detail = tasks[0]["SnapshotTaskDetail"] if tasks else {"Status": "deleted", "StatusMessage": "task vanished"}
        last.update(detail)
        status = detail.get("Status", "")
        if status == "completed":
            return str(detail["SnapshotId"])
        if status in ("deleted", "deleting"):
            raise DeployError(f"ImportSnapshot {task_id} failed: {detail.get('StatusMessage', 'no reason given')}")
        events.log("upload", f"import {task_id}: {status} {detail.get('Progress', '')}% "
                             f"{detail.get('StatusMessage', '')}")
        return None

    try:
        sid = until(finished, what=f"ImportSnapshot {task_id}", timeout=target.task_timeout, interval=POLL_DELAY,
                    backoff=1.5, max_interval=15.0)
    except WaitTimeout:
        try:
            ec2.cancel_import_task(ImportTaskId=task_id, CancelReason="pim: deadline passed")
        finally:
            raise DeployError(f"ImportSnapshot {task_id} did not finish within {target.task_timeout:.0f} s "
                              f"(last: {last.get('Status', '')} {last.get('Progress', '')}%)") from None
    ec2.create_tags(Resources=[sid], Tags=tag_list(tags_for(image, target)))
    return sid
