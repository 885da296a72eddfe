"""AMIs: register one from a snapshot, copy it to other regions, find and remove them.

An AMI is found by its pim:key tag or by its unique name (an untagged leftover);
removing one deregisters it and deletes its snapshots. Gone is never an error.
New AMIs are tagged by the call that makes them (TagSpecifications), so there is no
CreateTags on an AMI EC2 may not show yet; a RegisterImage whose success was lost and
retried by botocore is recognised by its name and snapshot and adopted.
"""

from __future__ import annotations

from typing import Any

from pim.engine.deploy.aws.common import (
    GONE, TAG_KEY, TAG_SNAPSHOT, Clients, ami_name, cleaning_up, delete_snapshot, error_code, failing_as, tag_list,
    tags_for, transient, volume_gib, wait_for,
)
from pim.engine.deploy.model import BuiltImage, DeployError
from pim.engine.deploy.spec import AwsTarget
from pim.engine.errors import InputError
from pim.engine.events import Emitter
from pim.engine.retry import EC2_VISIBLE, retrying

ARCH = {"x86_64": "x86_64", "aarch64": "arm64"}
BOOT_MODE = {"bios": "legacy-bios", "uefi": "uefi"}


def register_args(image: BuiltImage, target: AwsTarget, snapshot_id: str) -> dict[str, Any]:
    """RegisterImage's arguments: architecture, boot mode, ENA and root device from the build.

    The AMI is tagged at birth (TagSpecifications, ResourceType "image" only: EC2 refuses
    any other type on RegisterImage, EC2 API Reference, RegisterImage) with the build's
    tags and pim:snapshot = snapshot_id. The snapshot is not new here: it was tagged when
    it was made (StartSnapshot's Tags, or CreateTags after ImportSnapshot).
    """
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
        "TagSpecifications": [{"ResourceType": "image",
                               "Tags": tag_list(tags_for(image, target) | {TAG_SNAPSHOT: snapshot_id})}],
    }


def wait_image(ec2: Any, ami: str, timeout: float) -> None:
    """botocore's ImageAvailable waiter, waiting out InvalidAMIID.NotFound (common.wait_for).

    timeout: seconds. Raises DeployError if the AMI fails, is not available in time,
    or DescribeImages fails for good.
    """
    wait_for(ec2, "ImageAvailable", f"AMI {ami}", timeout, ImageIds=[ami])


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

def register(clients: Clients, target: AwsTarget, image: BuiltImage, sid: str, events: Emitter | None = None) -> str:
    """RegisterImage from the snapshot `sid`, tagged at birth; waits until it is available.

    Returns the AMI id. RegisterImage has no ClientToken, so a botocore retry after a
    lost success is answered InvalidAMIName.Duplicate: the AMI of that name is then
    adopted if its root device is `sid` (`adopt_registered`). Raises DeployError
    (RegisterImage refused, a name clash, the AMI failed or timed out); nothing
    half-made is left: the snapshot is deleted when no AMI was made, the AMI
    deregistered (with its snapshot) when it was. A cleanup that fails too is a
    warning through `events`; the first error is the one raised.
    """
    from botocore.exceptions import ClientError

    ec2 = clients.get("ec2", target.region)
    args = register_args(image, target, sid)
    try:
        try:
            ami = ec2.register_image(**args)["ImageId"]
        except ClientError as e:
            if error_code(e) != "InvalidAMIName.Duplicate":
                raise
            ami = adopt_registered(ec2, args, events)
    except Exception as e:
        cleaning_up(e, f"DeleteSnapshot {sid}", lambda: delete_snapshot(ec2, sid), events)
        if isinstance(e, DeployError):
            raise
        raise DeployError(f"RegisterImage failed in {target.region}: {e}") from e
    try:
        wait_image(ec2, ami, target.task_timeout)
    except BaseException as e:
        cleaning_up(e, f"deregistering {ami}",
                    lambda: deregister(ec2, {"ImageId": ami, "BlockDeviceMappings": args["BlockDeviceMappings"]}),
                    events)
        raise
    return ami


class _NotVisible(Exception):
    """No AMI of the name is visible (yet)."""


def root_snapshot(img: dict[str, Any]) -> str:
    """The snapshot id of the AMI's root device ("" when it has none)."""
    for m in img.get("BlockDeviceMappings", []):
        if m.get("DeviceName") == img.get("RootDeviceName"):
            return str(m.get("Ebs", {}).get("SnapshotId", ""))
    return ""


def adopt_registered(ec2: Any, args: dict[str, Any], events: Emitter | None = None) -> str:
    """The AMI named args["Name"] after RegisterImage answered InvalidAMIName.Duplicate.

    EC2 names are unique per account and region (EC2 API Reference, RegisterImage,
    Name; error InvalidAMIName.Duplicate). If that AMI's root device is our snapshot
    (args' root mapping), it is the one our own RegisterImage made before its answer
    was lost: returns its id. Looking it up waits out eventual consistency under
    EC2_VISIBLE (at most 10 tries, 90 s). Raises DeployError naming the name when the
    AMI of that name is someone else's (another snapshot) or never becomes visible.
    """
    name, root = args["Name"], args["RootDeviceName"]
    ours = next(m["Ebs"]["SnapshotId"] for m in args["BlockDeviceMappings"] if m["DeviceName"] == root)

    def lookup() -> dict[str, Any]:
        found = [i for i in ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])["Images"]
                 if i.get("State") != "deregistered"]
        if not found:
            raise _NotVisible(f"RegisterImage answered that AMI name {name} is in use, but no AMI of that name "
                              f"is visible")
        return found[0]

    log = (lambda line: events.log("deploy", line)) if events is not None else None
    try:
        img = retrying(EC2_VISIBLE, lookup, transient=lambda e: isinstance(e, _NotVisible) or transient(e),
                       what=f"DescribeImages name={name}", log=log)
    except _NotVisible as e:
        raise DeployError(str(e)) from e
    except Exception as e:
        raise DeployError(f"DescribeImages name={name} failed: {e}") from e
    if root_snapshot(img) != ours:
        raise DeployError(f"an AMI named {name} already exists ({img['ImageId']}, root snapshot "
                          f"{root_snapshot(img) or 'none'}) and was not made from this upload's snapshot {ours}: "
                          f"RegisterImage cannot use that name")
    if events is not None:
        events.log("deploy", f"RegisterImage answered that {name} exists: it is {img['ImageId']}, made from "
                             f"{ours} by this deploy's first try; adopted")
    return str(img["ImageId"])


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


def copy_to(clients: Clients, target: AwsTarget, image: BuiltImage, source_ami: str, region: str,
            events: Emitter | None = None) -> tuple[str, str]:
    """CopyImage into region, the AMI and its new snapshot tagged at birth; returns (AMI id, snapshot id).

    TagSpecifications tag the copy and its snapshots (EC2 API Reference, CopyImage);
    the source's tags are not copied (CopyImageTags): its pim:snapshot names a snapshot
    in the source region. Waits (target.task_timeout seconds) until the copy is
    available. Raises DeployError naming CopyImage, or the waiter's DeployError; a copy
    that fails is deregistered (a failing cleanup is a warning, the first error raised).
    """
    ec2 = clients.get("ec2", region)
    tags = tag_list(tags_for(image, target))
    with failing_as(f"CopyImage of {source_ami} to {region}"):
        ami = ec2.copy_image(SourceImageId=source_ami, SourceRegion=target.region, Name=ami_name(image),
                             Description=f"PIM image {image.name} (key {image.key[:16]})",
                             TagSpecifications=[{"ResourceType": "image", "Tags": tags},
                                                {"ResourceType": "snapshot", "Tags": tags}],
                             ClientToken=copy_token(image))["ImageId"]
    img: dict[str, Any] = {"ImageId": ami}
    try:
        wait_image(ec2, ami, target.task_timeout)
        with failing_as(f"DescribeImages {ami}"):
            img = describe_image(ec2, ami)
        snaps = snapshots_of(img)
    except BaseException as e:
        cleaning_up(e, f"deregistering {ami}", lambda: deregister(ec2, img), events)
        raise
    return ami, (snaps[0] if snaps else "")


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
