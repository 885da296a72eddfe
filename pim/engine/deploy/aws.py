"""AWS: a built image as an AMI (and its EBS snapshot) in one or more regions.

The snapshot is written with the EBS direct APIs straight from the qcow2 read as
raw blocks (zero blocks never sent, blocks in parallel with SHA-256 checksums and
retried with backoff), or through S3 + import-snapshot (aws_import.py). Every AMI
and snapshot carries the tag pim:key = the build's content key: a second deploy
finds them and creates nothing; delete removes every one in every region.
"""

from __future__ import annotations

import base64
import hashlib
import random
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable

from pim.engine.deploy.blocks import EBS_BLOCK, ReadStats, open_raw
from pim.engine.deploy.model import BuiltImage, DeployError, DeployResult
from pim.engine.deploy.spec import AwsTarget
from pim.engine.errors import InputError
from pim.engine.events import Emitter

TAG_KEY, TAG_IMAGE, TAG_SNAPSHOT = "pim:key", "pim:image", "pim:snapshot"
GIB = 1 << 30
ARCH = {"x86_64": "x86_64", "aarch64": "arm64"}
BOOT_MODE = {"bios": "legacy-bios", "uefi": "uefi"}
_GONE = {"InvalidAMIID.NotFound", "InvalidAMIID.Unavailable", "InvalidSnapshot.NotFound", "InvalidSnapshotID.NotFound"}


@dataclass(frozen=True)
class Backoff:
    attempts: int = 6
    base: float = 0.25  # seconds before the first retry; doubles, with jitter
    cap: float = 8.0

    def delay(self, attempt: int) -> float:
        return min(self.cap, self.base * 2 ** attempt) * (0.5 + random.random() / 2)


BACKOFF = Backoff()


# ---------------------------------------------------------------- pure parts

def ami_name(image: BuiltImage) -> str:
    """Unique per build: AWS refuses a second AMI of that name in a region."""
    return f"pim-{image.name}-{image.key[:16]}"


def tags_for(image: BuiltImage, target: AwsTarget) -> dict[str, str]:
    tags = {"Name": ami_name(image), TAG_KEY: image.key, TAG_IMAGE: image.name}
    if image.sha256:
        tags["pim:sha256"] = image.sha256
    tags.update({f"pim:lineage:{stage}": value[:256] for stage, value in image.lineage_tags.items()})
    tags.update(target.tags)
    return tags


def tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]


def volume_gib(virtual_size: int) -> int:
    return max(1, -(-virtual_size // GIB))


def register_args(image: BuiltImage, target: AwsTarget, snapshot_id: str) -> dict[str, Any]:
    """RegisterImage's arguments: architecture, boot mode, ENA and root device from the build."""
    if image.arch not in ARCH:
        raise InputError(f"architecture {image.arch!r} cannot be registered as an AMI")
    if image.arch == "aarch64" and image.firmware != "uefi":
        raise InputError("an arm64 AMI must boot with UEFI: set firmware: uefi for this image")
    return {
        "Name": ami_name(image),
        "Description": f"PIM image {image.name} (key {image.key[:16]})",
        "Architecture": ARCH[image.arch],
        "BootMode": BOOT_MODE[image.firmware],
        "EnaSupport": target.ena,
        "VirtualizationType": "hvm",
        "RootDeviceName": target.root_device,
        "BlockDeviceMappings": [{
            "DeviceName": target.root_device,
            "Ebs": {"SnapshotId": snapshot_id, "VolumeType": target.volume_type,
                    "VolumeSize": volume_gib(image.virtual_size), "DeleteOnTermination": True},
        }],
        "TagSpecifications": [{"ResourceType": "image", "Tags": tag_list(tags_for(image, target))}],
    }


def checksum(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def error_code(err: BaseException) -> str:
    return str(getattr(err, "response", {}).get("Error", {}).get("Code", ""))


def retryable(err: BaseException) -> bool:
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    if isinstance(err, (ConnectionError, HTTPClientError)):
        return True
    if isinstance(err, ClientError):
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or status == 429 or "Throttl" in error_code(err) or error_code(err) == "RequestTimeout"
    return False


def with_retries(call: Callable[[], Any], what: str, backoff: Backoff | None = None) -> Any:
    backoff = backoff or BACKOFF
    for attempt in range(backoff.attempts):
        try:
            return call()
        except Exception as e:
            if not retryable(e) or attempt == backoff.attempts - 1:
                raise DeployError(f"{what} failed after {attempt + 1} attempt(s): {e}") from e
            time.sleep(backoff.delay(attempt))
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- clients

class Clients:
    """boto3 clients per (service, region) from the standard credential chain."""

    def __init__(self, target: AwsTarget):
        import boto3
        from botocore.config import Config

        self.target = target
        self.session = boto3.Session(profile_name=target.profile)
        # put_snapshot_block is retried by us (with_retries); everything else by botocore.
        self._configs = {
            "ebs": Config(retries={"total_max_attempts": 1}, max_pool_connections=target.parallel * 2 + 2,
                          connect_timeout=10, read_timeout=60),
            "default": Config(retries={"max_attempts": 6, "mode": "standard"}, connect_timeout=10, read_timeout=60),
        }
        self._cache: dict[tuple[str, str], Any] = {}

    def get(self, service: str, region: str) -> Any:
        if (service, region) not in self._cache:
            cfg = self._configs.get(service, self._configs["default"])
            self._cache[service, region] = self.session.client(
                service, region_name=region, endpoint_url=self.target.endpoint_url, config=cfg)
        return self._cache[service, region]


# ---------------------------------------------------------------- snapshot upload

def upload_direct(clients: Clients, target: AwsTarget, image: BuiltImage, events: Emitter) -> tuple[str, dict]:
    """Write the disk into a new EBS snapshot block by block; returns (snapshot id, stats)."""
    ebs = clients.get("ebs", target.region)
    assert image.path is not None
    with open_raw(image.path) as disk:
        snap = with_retries(lambda: ebs.start_snapshot(
            VolumeSize=volume_gib(disk.size), Tags=tag_list(tags_for(image, target)),
            Description=f"PIM {image.name} {image.key[:16]}", Timeout=60), "StartSnapshot")
        sid = snap["SnapshotId"]
        events.log("upload", f"writing {disk.size >> 20} MiB into {sid} ({target.region})")
        try:
            sent = _put_blocks(ebs, sid, disk, target.parallel, events)
            with_retries(lambda: ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=sent), "CompleteSnapshot")
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
        digest = checksum(data)
        with_retries(lambda: ebs.put_snapshot_block(
            SnapshotId=sid, BlockIndex=index, BlockData=data, DataLength=len(data),
            Checksum=digest, ChecksumAlgorithm="SHA256"), f"PutSnapshotBlock {index}")

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
    deadline = time.monotonic() + timeout
    delay = 0.5
    while True:
        snap = ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]
        if snap["State"] == "completed":
            return
        if snap["State"] == "error":
            raise DeployError(f"snapshot {sid} failed: {snap.get('StateMessage', 'no reason given')}")
        if time.monotonic() > deadline:
            raise DeployError(f"snapshot {sid} not completed after {timeout:.0f} s (at {snap.get('Progress', '?')})")
        time.sleep(delay)
        delay = min(delay * 2, 15)


def wait_image(ec2: Any, ami: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    delay = 0.5
    while True:
        images = ec2.describe_images(ImageIds=[ami])["Images"]
        state = images[0]["State"] if images else "missing"
        if state == "available":
            return images[0]
        if state in ("failed", "invalid", "error", "deregistered", "missing"):
            reason = images[0].get("StateReason", {}).get("Message", "") if images else ""
            raise DeployError(f"AMI {ami} ended in state {state} {reason}".strip())
        if time.monotonic() > deadline:
            raise DeployError(f"AMI {ami} not available after {timeout:.0f} s")
        time.sleep(delay)
        delay = min(delay * 2, 15)


# ---------------------------------------------------------------- find / delete

def find_images(ec2: Any, image: BuiltImage) -> list[dict[str, Any]]:
    """This build's AMIs in one region: by tag, and by its unique name (an untagged leftover)."""
    seen: dict[str, dict[str, Any]] = {}
    for flt in ({"Name": f"tag:{TAG_KEY}", "Values": [image.key]}, {"Name": "name", "Values": [ami_name(image)]}):
        for img in ec2.describe_images(Owners=["self"], Filters=[flt])["Images"]:
            if img.get("State") != "deregistered":
                seen[img["ImageId"]] = img
    return list(seen.values())


def snapshots_of(img: dict[str, Any]) -> list[str]:
    """The AMI's snapshots: pim:snapshot (the one PIM wrote) first, then its block device mappings."""
    tagged = [t["Value"] for t in img.get("Tags", []) if t["Key"] == TAG_SNAPSHOT]
    mapped = [m["Ebs"]["SnapshotId"] for m in img.get("BlockDeviceMappings", []) if m.get("Ebs", {}).get("SnapshotId")]
    return list(dict.fromkeys(tagged + mapped))


def tagged_snapshots(ec2: Any, key: str) -> list[str]:
    snaps = ec2.describe_snapshots(OwnerIds=["self"], Filters=[{"Name": f"tag:{TAG_KEY}", "Values": [key]}])
    return [s["SnapshotId"] for s in snaps["Snapshots"]]


def delete_snapshot(ec2: Any, sid: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        ec2.delete_snapshot(SnapshotId=sid)
        return True
    except ClientError as e:
        if error_code(e) in _GONE:
            return False
        raise


def deregister(ec2: Any, img: dict[str, Any]) -> list[str]:
    """Deregister one AMI and delete its snapshots; returns what was removed."""
    from botocore.exceptions import ClientError

    removed = []
    try:
        ec2.deregister_image(ImageId=img["ImageId"])
        removed.append(img["ImageId"])
    except ClientError as e:
        if error_code(e) not in _GONE:
            raise
    for sid in snapshots_of(img):
        if delete_snapshot(ec2, sid):
            removed.append(sid)
    return removed


def cleanup_orphans(ec2: Any, key: str, keep: set[str]) -> list[str]:
    """Snapshots of this build that no AMI uses (an interrupted upload)."""
    return [sid for sid in tagged_snapshots(ec2, key) if sid not in keep and delete_snapshot(ec2, sid)]


# ---------------------------------------------------------------- AMIs

def register(clients: Clients, target: AwsTarget, image: BuiltImage, sid: str) -> str:
    """RegisterImage from the snapshot; on any failure nothing half-made is left."""
    ec2 = clients.get("ec2", target.region)
    args = register_args(image, target, sid)
    try:
        ami = ec2.register_image(**args)["ImageId"]
    except Exception as e:
        delete_snapshot(ec2, sid)
        raise DeployError(f"RegisterImage failed in {target.region}: {e}") from e
    try:
        # Some AWS look-alikes ignore TagSpecifications; tagging again is harmless on AWS.
        ec2.create_tags(Resources=[ami, sid], Tags=tag_list(tags_for(image, target)))
        ec2.create_tags(Resources=[ami], Tags=[{"Key": TAG_SNAPSHOT, "Value": sid}])
        wait_image(ec2, ami, target.task_timeout)
    except BaseException:
        deregister(ec2, {"ImageId": ami, "BlockDeviceMappings": args["BlockDeviceMappings"]})
        raise
    return ami


def copy_to(clients: Clients, target: AwsTarget, image: BuiltImage, source_ami: str, region: str) -> tuple[str, str]:
    ec2 = clients.get("ec2", region)
    tags = tag_list(tags_for(image, target))
    ami = ec2.copy_image(SourceImageId=source_ami, SourceRegion=target.region, Name=ami_name(image),
                         Description=f"PIM image {image.name} (key {image.key[:16]})", CopyImageTags=True,
                         ClientToken=f"pim-{image.key[:40]}-{region}")["ImageId"]
    img: dict[str, Any] = {"ImageId": ami}
    try:
        ec2.create_tags(Resources=[ami], Tags=tags)
        img = wait_image(ec2, ami, target.task_timeout)
        snaps = snapshots_of(img)
        if snaps:
            _tag_existing(ec2, snaps, tags)
    except BaseException:
        deregister(ec2, img)
        raise
    return ami, (snaps[0] if snaps else "")


def _tag_existing(ec2: Any, ids: list[str], tags: list[dict[str, str]]) -> None:
    from botocore.exceptions import ClientError

    try:
        ec2.create_tags(Resources=ids, Tags=tags)
    except ClientError as e:
        if error_code(e) not in _GONE:
            raise


def _usable(ec2: Any, image: BuiltImage, target: AwsTarget, events: Emitter, region: str) -> dict[str, Any] | None:
    """This build's AMI in a region, waiting for a pending one; broken ones are removed."""
    found = None
    for img in find_images(ec2, image):
        state = img.get("State")
        if found is None and state in ("available", "pending"):
            found = wait_image(ec2, img["ImageId"], target.task_timeout) if state == "pending" else img
        else:
            events.log("deploy", f"removing unusable AMI {img['ImageId']} ({state}) in {region}")
            deregister(ec2, img)
    return found


def deploy(target: AwsTarget, image: BuiltImage, events: Emitter, target_name: str = "",
           clients: Clients | None = None) -> DeployResult:
    clients = clients or Clients(target)
    regions: dict[str, dict[str, str]] = {}
    created, stats = False, {}
    ec2 = clients.get("ec2", target.region)
    home = _usable(ec2, image, target, events, target.region)
    if home is None:
        if image.path is None:
            raise InputError(f"no build of {image.name} with key {image.key[:16]} to upload")
        cleanup_orphans(ec2, image.key, keep=set())
        t0 = time.monotonic()
        if target.method == "import":
            from pim.engine.deploy.aws_import import upload_import

            sid, stats = upload_import(clients, target, image, events)
        else:
            sid, stats = upload_direct(clients, target, image, events)
        stats["upload_seconds"] = round(time.monotonic() - t0, 3)
        ami = register(clients, target, image, sid)
        events.log("deploy", f"registered {ami} in {target.region}")
        created = True
    else:
        ami, sid = home["ImageId"], (snapshots_of(home) or [""])[0]
        events.log("deploy", f"{ami} already exists in {target.region}: nothing uploaded")
    regions[target.region] = {"ami": ami, "snapshot": sid}
    for region in target.copy_to:
        rec2 = clients.get("ec2", region)
        copy = _usable(rec2, image, target, events, region)
        if copy is None:
            events.log("deploy", f"copying {ami} to {region}")
            regions[region] = dict(zip(("ami", "snapshot"), copy_to(clients, target, image, ami, region)))
            created = True
        else:
            regions[region] = {"ami": copy["ImageId"], "snapshot": (snapshots_of(copy) or [""])[0]}
    return DeployResult(target_name, "aws", image.name, image.key, created, {"regions": regions}, stats)


def exists(target: AwsTarget, image: BuiltImage, events: Emitter, target_name: str = "",
           clients: Clients | None = None) -> DeployResult | None:
    """The deployment if an available AMI of this build is in every region, else None (drift)."""
    clients = clients or Clients(target)
    regions = {}
    for region in target.regions:
        ok = [i for i in find_images(clients.get("ec2", region), image) if i.get("State") == "available"]
        if not ok:
            return None
        regions[region] = {"ami": ok[0]["ImageId"], "snapshot": (snapshots_of(ok[0]) or [""])[0]}
    return DeployResult(target_name, "aws", image.name, image.key, False, {"regions": regions})


def delete(target: AwsTarget, image: BuiltImage, events: Emitter, clients: Clients | None = None) -> list[str]:
    """Deregister every AMI of this build and delete its snapshots, in every region. Gone is fine."""
    clients = clients or Clients(target)
    removed: list[str] = []
    for region in target.regions:
        ec2 = clients.get("ec2", region)
        for img in find_images(ec2, image):
            removed += deregister(ec2, img)
        removed += cleanup_orphans(ec2, image.key, keep=set())
    for what in removed:
        events.log("delete", f"removed {what}")
    return removed
