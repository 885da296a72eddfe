"""AMIs: register one from a snapshot, copy it to other regions, find and remove them.

An AMI is found by its pim:key tag or by its unique name (an untagged leftover);
removing one deregisters it and deletes its snapshots. Gone is never an error.
"""

from __future__ import annotations

from typing import Any

from pim.engine.deploy.aws.common import (
    GONE, TAG_KEY, TAG_SNAPSHOT, Clients, ami_name, delete_snapshot, error_code, tag_list, tags_for, volume_gib,
    wait_for,
)
from pim.engine.deploy.model import BuiltImage, DeployError
from pim.engine.deploy.spec import AwsTarget
from pim.engine.errors import InputError
from pim.engine.events import Emitter

ARCH = {"x86_64": "x86_64", "aarch64": "arm64"}
BOOT_MODE = {"bios": "legacy-bios", "uefi": "uefi"}


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


def wait_image(ec2: Any, ami: str, timeout: float) -> None:
    """botocore's image_available waiter; DeployError if the AMI fails or times out (seconds)."""
    wait_for(ec2, "image_available", f"AMI {ami}", timeout, ImageIds=[ami])


def describe_image(ec2: Any, ami: str) -> dict[str, Any]:
    images = ec2.describe_images(ImageIds=[ami])["Images"]
    if not images:
        raise DeployError(f"AMI {ami} vanished")
    return images[0]


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


def deregister(ec2: Any, img: dict[str, Any]) -> list[str]:
    """Deregister one AMI and delete its snapshots; returns what was removed."""
    from botocore.exceptions import ClientError

    removed = []
    try:
        ec2.deregister_image(ImageId=img["ImageId"])
        removed.append(img["ImageId"])
    except ClientError as e:
        if error_code(e) not in GONE:
            raise
    for sid in snapshots_of(img):
        if delete_snapshot(ec2, sid):
            removed.append(sid)
    return removed


def cleanup_orphans(ec2: Any, key: str, keep: set[str]) -> list[str]:
    """Snapshots of this build that no AMI uses (an interrupted upload)."""
    return [sid for sid in tagged_snapshots(ec2, key) if sid not in keep and delete_snapshot(ec2, sid)]


# ---------------------------------------------------------------- make

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


def copy_token(image: BuiltImage) -> str:
    """A new ClientToken for each CopyImage this deploy sends (at most 64 ASCII characters).

    EC2 answers a token it has seen with the first request's result, even an AMI that
    was deregistered since (EC2 API Reference, "Ensuring idempotency"): a token derived
    from the build alone would hand a repair the copy it is repairing. botocore's
    retries of one call resend the same token, which is what it is for; a copy made by
    an earlier deploy is found by its name and tags (`usable`) before any copy is asked for.
    """
    import secrets

    return f"pim-{image.key[:24]}-{secrets.token_hex(8)}"


def copy_to(clients: Clients, target: AwsTarget, image: BuiltImage, source_ami: str, region: str) -> tuple[str, str]:
    """CopyImage into region, tagged like the source; returns (AMI id, snapshot id)."""
    ec2 = clients.get("ec2", region)
    tags = tag_list(tags_for(image, target))
    ami = ec2.copy_image(SourceImageId=source_ami, SourceRegion=target.region, Name=ami_name(image),
                         Description=f"PIM image {image.name} (key {image.key[:16]})", CopyImageTags=True,
                         ClientToken=copy_token(image))["ImageId"]
    img: dict[str, Any] = {"ImageId": ami}
    try:
        ec2.create_tags(Resources=[ami], Tags=tags)
        wait_image(ec2, ami, target.task_timeout)
        img = describe_image(ec2, ami)
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
        if error_code(e) not in GONE:
            raise


def usable(ec2: Any, image: BuiltImage, target: AwsTarget, events: Emitter, region: str) -> dict[str, Any] | None:
    """This build's AMI in a region, waiting for a pending one; broken ones are removed."""
    found = None
    for img in find_images(ec2, image):
        state = img.get("State")
        if found is None and state in ("available", "pending"):
            if state == "pending":
                wait_image(ec2, img["ImageId"], target.task_timeout)
                img = describe_image(ec2, img["ImageId"])
            found = img
        else:
            events.log("deploy", f"removing unusable AMI {img['ImageId']} ({state}) in {region}")
            deregister(ec2, img)
    return found
