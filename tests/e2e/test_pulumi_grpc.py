"""pim.Image and pim.Deployment through the Pulumi SDK's own dynamic-provider server with
a real build: Create builds the fixture ISO's image under QEMU (the install stage is
shared with the other e2e tests' cache, so this is one provisioning run), then deploys
the real artifact to the test AWS (moto) and Proxmox (fake) servers on 127.0.0.1."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from pim.engine.pipeline.keys import file_digest
from pim.pulumi_provider.deployment import DeploymentProvider
from pim.pulumi_provider.image import ImageProvider
from pim.pulumi_provider.inputs import DEPLOYMENT_OUTPUTS, IMAGE_OUTPUTS
from tests.deploy.conftest import boto, moto_url, pve, pve_cert  # noqa: F401  (fixtures)
from tests.deploy.pve_fake import TOKEN_ID, TOKEN_SECRET
from tests.e2e.conftest import make_config
from tests.pulumi.grpc_client import DynamicServer, provider_env, with_provider

pytestmark = pytest.mark.e2e

IMAGE_TYPE = "pulumi-python:dynamic/pim:Image"
DEPLOYMENT_TYPE = "pulumi-python:dynamic/pim:Deployment"
STEP = {"type": "shell", "name": "pulumi-marker", "inline": "echo built through pulumi > /root/pim-pulumi-marker"}


@pytest.fixture(scope="module")
def servers(moto_url: str, pim_cache: Path, runtime_root: Path) -> Iterator[tuple[DynamicServer, DynamicServer]]:  # noqa: F811
    # As the engine starts them: with its environment (AWS credentials from moto_url's set-up).
    env = provider_env(PIM_CACHE_DIR=str(pim_cache), XDG_RUNTIME_DIR=str(runtime_root),
                       PIM_PROXMOX_TOKEN_SECRET=TOKEN_SECRET)
    image, deployment = DynamicServer(env, IMAGE_TYPE).start(), DynamicServer(env, DEPLOYMENT_TYPE).start()
    try:
        yield image, deployment
    finally:
        image.stop()
        deployment.stop()


@pytest.fixture(scope="module")
def created(servers: tuple, fixture_iso: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    image_srv, _ = servers
    image_srv.configure({})
    config = make_config(tmp_path_factory.mktemp("pulumi-e2e"), fixture_iso, provision=[STEP])
    props = with_provider({"config": str(config), "image": "e2e", "tags": {"suite": "e2e"},
                           "delete_artifact": False, **dict.fromkeys(IMAGE_OUTPUTS)}, ImageProvider())
    checked, failures = image_srv.check("e2e", {}, props)
    assert failures == []
    t0 = time.monotonic()
    id_, outs = image_srv.create("e2e", checked)  # no deadline, as the engine calls it
    return {"config": config, "inputs": checked, "id": id_, "outs": outs, "seconds": time.monotonic() - t0}


def test_create_builds_the_image_and_reports_progress(created: dict, servers: tuple) -> None:
    outs = created["outs"]
    assert created["id"] == outs["content_key"] and len(outs["content_key"]) == 64
    assert Path(outs["path"]).is_file() and outs["format"] == "qcow2" and outs["arch"] == "x86_64"
    manifest = json.loads(Path(outs["manifest_path"]).read_text())
    assert manifest["artifact"]["sha256"] == outs["sha256"] == file_digest(Path(outs["path"]))
    assert [s["step"] for s in manifest["stages"]["provision"]["steps"]] == ["pulumi-marker"]
    # the SBOM and the signed provenance are outputs, beside the image, as the manifest names them
    for attr, field in (("sbom_path", "sbom"), ("provenance_path", "provenance")):
        assert Path(outs[attr]).parent == Path(outs["path"]).parent
        assert file_digest(Path(outs[attr])) == manifest[field]["sha256"]
    assert outs["input_digests"]["provision: step 1 (pulumi-marker) inline script content"].startswith("hmac-sha256:")
    log = servers[0].log
    for line in ("pim.Image e2e: provision started", "step 1:pulumi-marker", "pim.Image e2e: final done"):
        assert line in log, line


def test_preview_of_the_unchanged_image_is_fast_and_says_nothing_changed(created: dict, servers: tuple) -> None:
    t0 = time.monotonic()
    diff = servers[0].diff("e2e", created["id"], created["outs"], created["inputs"])
    assert diff.none and time.monotonic() - t0 < 1.0


def test_a_second_create_is_a_cache_hit(created: dict, servers: tuple) -> None:
    t0 = time.monotonic()
    id_, outs = servers[0].create("e2e", created["inputs"])
    assert id_ == created["id"] and outs["path"] == created["outs"]["path"]
    assert time.monotonic() - t0 < 15


def test_refresh_finds_the_artifact(created: dict, servers: tuple) -> None:
    assert servers[0].read("e2e", created["id"], created["outs"])[0] == created["id"]


def _deployment(created: dict, target: dict[str, Any]) -> dict[str, Any]:
    outs = created["outs"]
    return with_provider({"image_name": "e2e", "image_key": outs["content_key"], "manifest_path": outs["manifest_path"],
                          "image_sha256": outs["sha256"], "target": target, "base_dir": "/", "tags": {"suite": "e2e"},
                          **dict.fromkeys(DEPLOYMENT_OUTPUTS)}, DeploymentProvider())


def test_deploy_the_build_as_an_ami_and_delete_it(created: dict, servers: tuple, moto_url: str) -> None:  # noqa: F811
    _, s = servers
    s.configure({})
    checked, failures = s.check("ami", {}, _deployment(created, {"type": "aws", "region": "us-east-1",
                                                                 "endpoint_url": moto_url}))
    assert failures == []
    id_, outs = s.create("ami", checked)
    ec2 = boto(moto_url, "ec2")
    image = ec2.describe_images(ImageIds=[id_])["Images"][0]
    tags = {t["Key"]: t["Value"] for t in image["Tags"]}
    assert tags["pim:key"] == created["id"] and tags["suite"] == "e2e"
    manifest = json.loads(Path(created["outs"]["manifest_path"]).read_text())
    assert tags["pim:sbom"] == manifest["sbom"]["sha256"] and tags["pim:provenance"] == manifest["provenance"]["sha256"]
    blocks = boto(moto_url, "ebs").list_snapshot_blocks(SnapshotId=outs["snapshot_id"])["Blocks"]
    assert blocks, "the snapshot holds the image's data"
    assert s.diff("ami", id_, outs, checked).none
    assert s.read("ami", id_, outs)[0] == id_
    s.delete("ami", id_, outs)
    assert ec2.describe_images(Owners=["self"], Filters=[{"Name": "tag:pim:key", "Values": [created["id"]]}])[
        "Images"] == []


def test_deploy_the_build_as_a_proxmox_template_and_delete_it(created: dict, servers: tuple, pve: Any,  # noqa: F811
                                                              pve_cert: tuple) -> None:  # noqa: F811
    _, s = servers
    target = {"type": "proxmox", "api_url": pve.url, "node": pve.node, "storage": "local-lvm",
              "token_id": TOKEN_ID, "ca_file": pve_cert[0]}
    checked, failures = s.check("tpl", {}, _deployment(created, target))
    assert failures == []
    id_, outs = s.create("tpl", checked)
    vmid = int(outs["vmid"])
    assert id_ == f"pve/{vmid}" and pve.vms[vmid]["template"] == 1
    uploaded = Path(pve.files[outs["volume"]]["path"])
    assert file_digest(uploaded) == created["outs"]["sha256"]
    s.delete("tpl", id_, outs)
    assert pve.vms == {} and pve.files == {} and pve.schema_errors == []
    assert TOKEN_SECRET not in s.log


def test_deleting_the_image_keeps_the_build(created: dict, servers: tuple) -> None:
    servers[0].delete("e2e", created["id"], created["outs"])
    assert Path(created["outs"]["path"]).is_file()

