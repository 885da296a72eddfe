"""AWS deploys against a real moto server on 127.0.0.1 (boto3 over HTTP, no stubs),
except where moto cannot answer: register_image's arguments (moto ignores them:
botocore's Stubber checks them against the service model) and import-snapshot
(moto lacks it: a fake of its task state machine, checked against the model too)."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import pytest

from pim.engine.deploy.aws import amis, s3import
from pim.engine.deploy.aws import backend as aws_mod
from pim.engine.deploy.aws.common import Clients, checksum
from pim.engine.deploy.model import BuiltImage, DeployError
from tests.deploy.conftest import BLOCK, Disk, Recorder, aws_target, boto, make_disk, standard_writes


def nonzero_blocks(raw: Path) -> dict[int, bytes]:
    data = raw.read_bytes()
    return {i: data[i * BLOCK:(i + 1) * BLOCK] for i in range(len(data) // BLOCK)
            if data[i * BLOCK:(i + 1) * BLOCK].count(0) != BLOCK}


def snapshot_blocks(url: str, sid: str) -> dict[int, bytes]:
    ebs = boto(url, "ebs")
    listing = ebs.list_snapshot_blocks(SnapshotId=sid)
    out = {}
    for b in listing["Blocks"]:
        got = ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=b["BlockIndex"], BlockToken=b["BlockToken"])
        data = got["BlockData"].read()
        assert got["Checksum"] == base64.b64encode(hashlib.sha256(data).digest()).decode()
        out[b["BlockIndex"]] = data
    return out


def own_images(url: str, region: str) -> list[dict[str, Any]]:
    return boto(url, "ec2", region).describe_images(Owners=["self"])["Images"]


def images_of(url: str, region: str, image: BuiltImage) -> list[dict[str, Any]]:
    """The moto server lives for the session: each test looks only at its own build's AMIs."""
    return amis.find_images(boto(url, "ec2", region), image)


def test_every_block_round_trips_and_zero_blocks_are_not_sent(aws: str, disk: Disk, events: Recorder) -> None:
    result = aws_mod.deploy(aws_target(aws), disk.image, events.emitter, "aws")
    sid = result.resources["regions"]["us-east-1"]["snapshot"]
    expected = nonzero_blocks(disk.raw)
    assert snapshot_blocks(aws, sid) == expected  # byte for byte, checksums included
    assert 5 not in expected  # the block written with explicit zeros was read and dropped
    assert result.stats["blocks_data"] == len(expected) == 4
    assert result.stats["blocks_zero"] == 32 - 4
    assert result.stats["bytes_sent"] == 4 * BLOCK
    ami = boto(aws, "ec2").describe_images(ImageIds=[result.resources["regions"]["us-east-1"]["ami"]])["Images"][0]
    tags = {t["Key"]: t["Value"] for t in ami["Tags"]}
    assert tags["pim:key"] == disk.image.key and tags["pim:image"] == "demo"
    assert tags["pim:lineage:iso"] == "ab" * 32 and tags["pim:lineage:install"] == "cd" * 32
    assert tags["pim:sbom"] == "5b" * 32 and tags["pim:provenance"] == "9a" * 32
    snapshot = boto(aws, "ec2").describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]
    assert {t["Key"]: t["Value"] for t in snapshot["Tags"]}["pim:provenance"] == "9a" * 32


def test_compressed_qcow2_round_trips(aws: str, tmp_path: Path, events: Recorder) -> None:
    d = make_disk(tmp_path, "zipped", 16 * BLOCK, standard_writes()[:3], compress=True)
    result = aws_mod.deploy(aws_target(aws), d.image, events.emitter)
    assert snapshot_blocks(aws, result.resources["regions"]["us-east-1"]["snapshot"]) == nonzero_blocks(d.raw)


def test_redeploy_finds_the_ami_and_creates_nothing(aws: str, disk: Disk, events: Recorder) -> None:
    target = aws_target(aws, copy_to=["eu-west-1"])
    first = aws_mod.deploy(target, disk.image, events.emitter)
    before = {r: own_images(aws, r) for r in target.regions}
    # The disk file is gone: a second deploy must not need to read it.
    gone = BuiltImage(**{**disk.image.__dict__, "path": Path("/nonexistent/disk.qcow2")})
    second = aws_mod.deploy(target, gone, events.emitter)
    assert second.created is False and second.resources == first.resources
    assert {r: own_images(aws, r) for r in target.regions} == before


def test_delete_leaves_no_ami_or_snapshot_in_any_region(aws: str, disk: Disk, events: Recorder) -> None:
    target = aws_target(aws, copy_to=["eu-west-1", "ap-south-1"])
    result = aws_mod.deploy(target, disk.image, events.emitter)
    assert set(result.resources["regions"]) == {"us-east-1", "eu-west-1", "ap-south-1"}
    assert all(images_of(aws, r, disk.image) for r in target.regions)
    removed = aws_mod.delete(target, BuiltImage.by_key("demo", disk.image.key), events.emitter)
    assert result.resources["regions"]["us-east-1"]["ami"] in removed
    for region in target.regions:
        assert images_of(aws, region, disk.image) == []
        assert amis.tagged_snapshots(boto(aws, "ec2", region), disk.image.key) == []
    home_snap = result.resources["regions"]["us-east-1"]["snapshot"]
    assert home_snap in removed
    assert aws_mod.delete(target, disk.image, events.emitter) == []  # already gone is success


def test_exists_reports_drift_and_deploy_repairs_only_what_is_missing(aws: str, disk: Disk, events: Recorder) -> None:
    target = aws_target(aws, copy_to=["eu-west-1"])
    assert aws_mod.exists(target, disk.image, events.emitter) is None
    first = aws_mod.deploy(target, disk.image, events.emitter)
    assert aws_mod.exists(target, disk.image, events.emitter).resources == first.resources
    boto(aws, "ec2", "eu-west-1").deregister_image(ImageId=first.resources["regions"]["eu-west-1"]["ami"])
    assert aws_mod.exists(target, disk.image, events.emitter) is None
    again = aws_mod.deploy(target, disk.image, events.emitter)
    assert again.created is True
    assert again.resources["regions"]["us-east-1"] == first.resources["regions"]["us-east-1"]
    assert again.resources["regions"]["eu-west-1"]["ami"] != first.resources["regions"]["eu-west-1"]["ami"]
    repaired = boto(aws, "ec2", "eu-west-1").describe_images(ImageIds=[again.resources["regions"]["eu-west-1"]["ami"]])
    assert repaired["Images"][0]["State"] == "available"


def test_the_fake_answers_a_repeated_client_token_with_the_first_copy_even_when_gone(aws: str, disk: Disk,
                                                                                      events: Recorder) -> None:
    """What the repair above must not run into: EC2's client-token rule, kept by ec2_rules."""
    from pim.engine.deploy.aws.common import Clients

    source = aws_mod.deploy(aws_target(aws), disk.image, events.emitter).resources["regions"]["us-east-1"]["ami"]
    ec2 = Clients(aws_target(aws)).get("ec2", "ap-south-1")
    args = {"SourceImageId": source, "SourceRegion": "us-east-1", "Name": f"token-{disk.image.key[:8]}",
            "ClientToken": f"fixed-{disk.image.key[:16]}"}
    first = ec2.copy_image(**args)["ImageId"]
    boto(aws, "ec2", "ap-south-1").deregister_image(ImageId=first)
    assert ec2.copy_image(**args)["ImageId"] == first  # the dead copy again
    assert ec2.copy_image(**{**args, "ClientToken": amis.copy_token(disk.image)})["ImageId"] != first


def test_an_orphan_snapshot_of_an_interrupted_upload_is_cleaned(aws: str, disk: Disk, events: Recorder) -> None:
    ebs = boto(aws, "ebs")
    orphan = ebs.start_snapshot(VolumeSize=1, Tags=[{"Key": "pim:key", "Value": disk.image.key}])["SnapshotId"]
    aws_mod.deploy(aws_target(aws), disk.image, events.emitter)
    assert orphan not in amis.tagged_snapshots(boto(aws, "ec2"), disk.image.key)


# ---------------------------------------------------------------- register_image arguments

@pytest.mark.parametrize("arch,firmware,want_arch,want_boot", [
    ("x86_64", "bios", "x86_64", "legacy-bios"), ("x86_64", "uefi", "x86_64", "uefi"),
    ("aarch64", "uefi", "arm64", "uefi")])
def test_register_image_arguments_match_botocore_model(arch: str, firmware: str, want_arch: str, want_boot: str,
                                                       disk: Disk) -> None:
    import boto3
    from botocore.stub import Stubber

    image = BuiltImage(**{**disk.image.__dict__, "arch": arch, "firmware": firmware, "virtual_size": 3 << 30})
    target = aws_target("http://127.0.0.1:9", volume_type="gp3", root_device="/dev/xvda")
    args = amis.register_args(image, target, "snap-0123456789abcdef0")
    assert args["Architecture"] == want_arch and args["BootMode"] == want_boot
    assert args["EnaSupport"] is True and args["RootDeviceName"] == "/dev/xvda"
    assert args["BlockDeviceMappings"][0]["Ebs"] == {"SnapshotId": "snap-0123456789abcdef0", "VolumeType": "gp3",
                                                     "VolumeSize": 3, "DeleteOnTermination": True}
    # tagged at birth, and only as "image": RegisterImage refuses any other ResourceType
    assert [spec["ResourceType"] for spec in args["TagSpecifications"]] == ["image"]
    tags = {t["Key"]: t["Value"] for t in args["TagSpecifications"][0]["Tags"]}
    assert tags["pim:key"] == image.key and tags["pim:snapshot"] == "snap-0123456789abcdef0"
    ec2 = boto3.client("ec2", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(ec2) as stub:  # Stubber validates the parameters against the EC2 service model
        stub.add_response("register_image", {"ImageId": "ami-0123456789abcdef0"}, args)  # no CreateTags after it
        stub.add_response("describe_images", {"Images": [{"ImageId": "ami-0123456789abcdef0", "State": "available"}]},
                          {"ImageIds": ["ami-0123456789abcdef0"]})
        clients = _StubClients(target, {"ec2": ec2})
        assert amis.register(clients, target, image, "snap-0123456789abcdef0") == "ami-0123456789abcdef0"
        stub.assert_no_pending_responses()


def test_arm64_needs_uefi(disk: Disk) -> None:
    from pim.engine.errors import InputError

    image = BuiltImage(**{**disk.image.__dict__, "arch": "aarch64", "firmware": "bios"})
    with pytest.raises(InputError, match="UEFI"):
        amis.register_args(image, aws_target("http://127.0.0.1:9"), "snap-1")


class _StubClients(Clients):
    def __init__(self, target: Any, clients: dict[str, Any]):
        super().__init__(target)
        self.fixed = clients

    def get(self, service: str, region: str) -> Any:
        return self.fixed.get(service) or super().get(service, region)


# ---------------------------------------------------------------- S3 + import-snapshot

class FakeImportEc2:
    """moto's EC2 plus ImportSnapshot's task state machine: pending -> active -> completed | deleted.

    On completion it does what AWS does with the S3 object: makes a snapshot of it (here with
    the EBS direct APIs, so the test can read every block back).
    """

    def __init__(self, real: Any, url: str, fail: str | None = None):
        self.real, self.url, self.fail = real, url, fail
        self.tasks: dict[str, dict[str, Any]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def _validate(self, operation: str, params: dict[str, Any]) -> None:
        from botocore.validate import validate_parameters

        validate_parameters(params, self.real.meta.service_model.operation_model(operation).input_shape)

    def import_snapshot(self, **params: Any) -> dict[str, Any]:
        self._validate("ImportSnapshot", params)
        task_id = f"import-snap-{len(self.tasks) + 1:017x}"
        bucket = params["DiskContainer"]["UserBucket"]
        self.tasks[task_id] = {"step": 0, "bucket": bucket, "detail": {"Status": "active", "Progress": "0"}}
        return {"ImportTaskId": task_id, "SnapshotTaskDetail": {"Status": "active"}}

    def describe_import_snapshot_tasks(self, **params: Any) -> dict[str, Any]:
        self._validate("DescribeImportSnapshotTasks", params)
        task_id = params["ImportTaskIds"][0]
        task = self.tasks[task_id]
        task["step"] += 1
        if task["step"] == 1:
            task["detail"] = {"Status": "active", "Progress": "19", "StatusMessage": "pending"}
        elif task["step"] == 2:
            task["detail"] = {"Status": "active", "Progress": "63", "StatusMessage": "converting"}
        elif self.fail:
            task["detail"] = {"Status": "deleted", "StatusMessage": self.fail}
        elif task["detail"]["Status"] != "completed":
            task["detail"] = {"Status": "completed", "Progress": "100", "SnapshotId": self._snapshot(task["bucket"])}
        return {"ImportSnapshotTasks": [{"ImportTaskId": task_id, "SnapshotTaskDetail": task["detail"]}]}

    def _snapshot(self, bucket: dict[str, str]) -> str:
        body = boto(self.url, "s3").get_object(Bucket=bucket["S3Bucket"], Key=bucket["S3Key"])["Body"].read()
        ebs = boto(self.url, "ebs")
        sid = ebs.start_snapshot(VolumeSize=max(1, -(-len(body) // (1 << 30))))["SnapshotId"]
        for i in range(0, len(body), BLOCK):
            block = body[i:i + BLOCK].ljust(BLOCK, b"\0")
            if block.count(0) != BLOCK:
                ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=i // BLOCK, BlockData=block, DataLength=BLOCK,
                                       Checksum=checksum(block), ChecksumAlgorithm="SHA256")
        ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=0)
        return sid


@pytest.fixture
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3import, "POLL_DELAY", 0.01)


def test_import_snapshot_path(aws: str, disk: Disk, events: Recorder, fast_polls: None) -> None:
    boto(aws, "s3").create_bucket(Bucket="pim-images-ok")
    target = aws_target(aws, method="import", s3_bucket="pim-images-ok")
    fake = FakeImportEc2(boto(aws, "ec2"), aws)
    result = aws_mod.deploy(target, disk.image, events.emitter, clients=_StubClients(target, {"ec2": fake}))
    sid = result.resources["regions"]["us-east-1"]["snapshot"]
    assert snapshot_blocks(aws, sid) == nonzero_blocks(disk.raw)  # what went through S3 was the raw disk
    assert result.stats["bytes_sent"] == 32 * BLOCK  # S3 objects are not sparse: zeros are sent here
    assert boto(aws, "s3").list_objects_v2(Bucket="pim-images-ok").get("KeyCount") == 0
    assert "converting" in events.text()


def test_import_snapshot_failure_is_reported_and_leaves_nothing(aws: str, disk: Disk, events: Recorder,
                                                                fast_polls: None) -> None:
    boto(aws, "s3").create_bucket(Bucket="pim-images")
    target = aws_target(aws, method="import", s3_bucket="pim-images")
    fake = FakeImportEc2(boto(aws, "ec2"), aws, fail="ClientError: Disk validation failed [Unsupported format]")
    with pytest.raises(DeployError, match="Disk validation failed"):
        aws_mod.deploy(target, disk.image, events.emitter, clients=_StubClients(target, {"ec2": fake}))
    assert images_of(aws, "us-east-1", disk.image) == []
    s3 = boto(aws, "s3")
    assert s3.list_objects_v2(Bucket="pim-images").get("KeyCount") == 0
    assert s3.list_multipart_uploads(Bucket="pim-images").get("Uploads", []) == []


def test_part_size_respects_the_part_limit() -> None:
    assert s3import.part_size(1 << 30) == 8 << 20
    assert s3import.part_size(2 << 40) * s3import.MAX_PARTS >= 2 << 40
    assert s3import.part_size(2 << 40) % (1 << 20) == 0


def test_an_aarch64_build_becomes_an_arm64_uefi_ami(aws: str, tmp_path: Path, events: Recorder,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[dict[str, Any]] = []
    real = amis.register_args
    monkeypatch.setattr(amis, "register_args", lambda *a: sent.append(real(*a)) or sent[-1])
    d = make_disk(tmp_path, "arm", 16 * BLOCK, standard_writes()[:3], firmware="uefi")
    image = BuiltImage(**{**d.image.__dict__, "arch": "aarch64"})
    result = aws_mod.deploy(aws_target(aws), image, events.emitter)
    ami = boto(aws, "ec2").describe_images(ImageIds=[result.resources["regions"]["us-east-1"]["ami"]])["Images"][0]
    assert (ami["BootMode"], ami["State"]) == ("uefi", "available")
    # moto 5 keeps no Architecture for a registered image: the request is checked instead
    assert [(a["Architecture"], a["BootMode"]) for a in sent] == [("arm64", "uefi")]
    assert snapshot_blocks(aws, result.resources["regions"]["us-east-1"]["snapshot"]) == nonzero_blocks(d.raw)
