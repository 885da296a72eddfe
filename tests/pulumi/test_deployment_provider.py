"""DeploymentProvider's methods called directly (layer a), against the deploy tests'
moto server and Proxmox fake."""

from __future__ import annotations

from typing import Any

import pytest

from pim.engine.deploy.aws import amis as aws_mod
from pim.engine.deploy.model import BuiltImage
from pim.pulumi_provider.deployment import DeploymentProvider
from pim.pulumi_provider.image import ImageProvider
from pim.pulumi_provider.inputs import UNKNOWN
from tests.deploy.conftest import boto
from tests.pulumi.conftest import Project


def image_outs(project: Project) -> dict[str, Any]:
    return ImageProvider().create(project.image_inputs()).outs


def inputs(image: dict[str, Any], target: Any, **extra: Any) -> dict[str, Any]:
    props = {"image_name": image["image"], "image_key": image["content_key"], "manifest_path": image["manifest_path"],
             "image_sha256": image["sha256"], "target": target, "base_dir": "/", "tags": {}}
    props.update(extra)
    return props


def aws_target(url: str, **kw: Any) -> dict[str, Any]:
    return {"type": "aws", "region": "us-east-1", "endpoint_url": url, **kw}


def pve_target(fake: Any, ca_file: str, **kw: Any) -> dict[str, Any]:
    from tests.deploy.pve_fake import TOKEN_ID

    return {"type": "proxmox", "api_url": fake.url, "node": fake.node, "storage": "local-lvm",
            "token_id": TOKEN_ID, "ca_file": ca_file, **kw}


def ami_tags(url: str, region: str, ami: str) -> dict[str, str]:
    img = boto(url, "ec2", region).describe_images(ImageIds=[ami])["Images"][0]
    return {t["Key"]: t["Value"] for t in img.get("Tags", [])}


# ---------------------------------------------------------------- check and diff (no network)

def test_check_reports_each_bad_target_field() -> None:
    got = {f.property: f.reason for f in DeploymentProvider().check({}, inputs(
        {"image": "web", "content_key": "k", "manifest_path": "/m", "sha256": "s"},
        {"type": "proxmox", "api_url": "http://pve", "node": "pve"})).failures}
    assert set(got) == {"target.api_url", "target.storage", "target.token_id"}
    assert "https" in got["target.api_url"]
    bad_type = DeploymentProvider().check({}, inputs({"image": "w", "content_key": "k", "manifest_path": "/m",
                                                      "sha256": "s"}, {"type": "gcp"})).failures
    assert [(f.property, f.reason) for f in bad_type] == [("target", "type must be one of proxmox, aws (got 'gcp')")]


def test_check_proxmox_tags_must_be_proxmox_tags(pve: Any, pve_cert: tuple) -> None:
    image = {"image": "w", "content_key": "k", "manifest_path": "/m", "sha256": "s"}
    got = DeploymentProvider().check({}, inputs(image, pve_target(pve, pve_cert[0]), tags={"env": "prod", "x": "a b"}))
    assert [f.property for f in got.failures] == ["tags.x"]


def test_check_with_a_target_not_known_yet_validates_nothing() -> None:
    got = DeploymentProvider().check({}, inputs({"image": "w", "content_key": UNKNOWN, "manifest_path": UNKNOWN,
                                                 "sha256": UNKNOWN}, UNKNOWN))
    assert got.failures == []


def _outs(target: dict[str, Any], key: str = "a" * 64) -> dict[str, Any]:
    from pim.pulumi_provider.inputs import target_spec, target_view

    spec, name, _ = target_spec({"target": target, "base_dir": "/"})
    return {"image_key": key, "target_view": target_view(spec), "tags": {}}


@pytest.mark.parametrize("change, expect", [
    ({}, ("none", [], False)),
    ({"task_timeout": "2h", "parallel": 2}, ("none", [], False)),       # how, not what
    ({"copy_to": ["eu-west-1"]}, ("update", [], False)),                # in place
    ({"tags": {"team": "infra"}}, ("update", [], False)),
    ({"region": "eu-west-1"}, ("replace", ["target"], True)),           # same key, same AMI: delete first
    ({"volume_type": "gp2"}, ("replace", ["target"], True)),
])
def test_diff_of_target_changes(change: dict, expect: tuple) -> None:
    base = {"type": "aws", "region": "us-east-1"}
    olds = _outs(base)
    diff = DeploymentProvider().diff("ami-1", olds, {"image_key": "a" * 64, "target": {**base, **change},
                                                     "base_dir": "/", "tags": {}})
    kind = "replace" if diff.replaces else ("update" if diff.changes else "none")
    assert (kind, diff.replaces, bool(diff.delete_before_replace)) == expect


def test_diff_of_proxmox_nodes_and_an_older_releases_target_view() -> None:
    base = {"type": "proxmox", "api_url": "https://pve.invalid:8006", "node": "pve1", "storage": "local-lvm",
            "token_id": "pim@pve!deploy"}
    olds = _outs(base)
    olds["target_view"] = {k: v for k, v in olds["target_view"].items() if k not in ("nodes", "image_url")}

    def diff(target: dict) -> Any:
        return DeploymentProvider().diff("pve1/100", olds, {"image_key": "a" * 64, "target": target, "base_dir": "/",
                                                            "tags": {}})
    # a view kept before `nodes` existed means nodes: [node]; the same target is no change
    assert diff(base).changes is False
    assert diff({**base, "image_url": "https://images.invalid/{filename}"}).changes is False  # how, not what
    more = diff({**{k: v for k, v in base.items() if k != "node"}, "nodes": ["pve1", "pve2"]})
    assert more.changes is True and more.replaces == []  # a node added is followed in place
    assert diff({**base, "storage": "other"}).replaces == ["target"]


def test_diff_a_new_build_replaces_creating_first() -> None:
    olds = _outs({"type": "aws", "region": "us-east-1"})
    for key in ("b" * 64, UNKNOWN):
        diff = DeploymentProvider().diff("ami-1", olds, {"image_key": key, "target": {"type": "aws", "region":
                                                         "us-east-1"}, "base_dir": "/"})
        assert diff.replaces == ["image_key"] and diff.delete_before_replace is False


def test_diff_deployment_tags_update_in_place() -> None:
    olds = _outs({"type": "aws", "region": "us-east-1"})
    diff = DeploymentProvider().diff("ami-1", olds, {"image_key": "a" * 64, "target": {"type": "aws", "region":
                                                     "us-east-1"}, "base_dir": "/", "tags": {"a": "b"}})
    assert diff.changes is True and diff.replaces == []


# ---------------------------------------------------------------- AWS (moto)

def test_aws_create_read_update_delete(project: Project, aws: str) -> None:
    p = DeploymentProvider()
    image = image_outs(project)
    props = inputs(image, aws_target(aws), tags={"team": "infra"})
    created = p.create(props)
    outs = created.outs
    assert created.id == outs["ami_id"] and outs["ami_id"].startswith("ami-")
    assert outs["snapshot_id"].startswith("snap-") and outs["ami_ids"] == {"us-east-1": outs["ami_id"]}
    assert outs["type"] == "aws" and outs["vmid"] is None
    tags = ami_tags(aws, "us-east-1", outs["ami_id"])
    assert tags["team"] == "infra" and tags["pim:key"] == project.key

    assert p.read(created.id, outs).id == created.id

    # in place: a region added to copy_to, a tag changed and one removed
    news = inputs(image, aws_target(aws, copy_to=["eu-west-1"]), tags={"owner": "ops"})
    assert p.diff(created.id, outs, news).replaces == []
    updated = p.update(created.id, outs, news).outs
    assert updated["ami_id"] == outs["ami_id"] and set(updated["ami_ids"]) == {"us-east-1", "eu-west-1"}
    for region, ami in updated["ami_ids"].items():
        tags = ami_tags(aws, region, ami)
        assert tags.get("owner") == "ops" and "team" not in tags, region

    # the region dropped again: its copy goes, the home AMI stays
    back = p.update(created.id, updated, inputs(image, aws_target(aws), tags={"owner": "ops"})).outs
    assert back["ami_ids"] == {"us-east-1": outs["ami_id"]}
    built = BuiltImage("web", project.key, None)
    assert aws_mod.find_images(boto(aws, "ec2", "eu-west-1"), built) == []

    p.delete(created.id, back)
    assert aws_mod.find_images(boto(aws, "ec2", "us-east-1"), built) == []
    assert aws_mod.tagged_snapshots(boto(aws, "ec2", "us-east-1"), project.key) == []
    assert p.read(created.id, back).id == ""  # gone: drift
    p.delete(created.id, back)  # already gone is fine


# ---------------------------------------------------------------- Proxmox (fake)

def test_proxmox_create_read_retag_delete(project: Project, pve: Any, pve_env: str, pve_cert: tuple) -> None:
    p = DeploymentProvider()
    image = image_outs(project)
    props = inputs(image, pve_target(pve, pve_cert[0]), tags={"env": "prod"})
    created = p.create(props)
    outs = created.outs
    vmid = outs["vmid"]
    assert created.id == f"pve/{vmid}" and outs["node"] == "pve" and outs["volume"].startswith("local:import/")
    assert outs["vmids"] == {"pve": vmid}
    assert pve.vms[vmid]["template"] == 1
    assert pve.vms[vmid]["tags"].split(";") == ["pim", f"pim-{project.key}", "env-prod"]

    updated = p.update(created.id, outs, inputs(image, pve_target(pve, pve_cert[0]), tags={"tier": ""})).outs
    assert updated["vmid"] == vmid and pve.vms[vmid]["tags"].split(";") == ["pim", f"pim-{project.key}", "tier"]

    del pve.vms[vmid]["scsi0"]  # drift: the template lost its disk
    assert p.read(created.id, updated).id == ""
    p.delete(created.id, updated)
    assert pve.vms == {} and pve.files == {}
    assert pve.schema_errors == []


def test_proxmox_token_from_the_stack_config(project: Project, pve: Any, pve_cert: tuple,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from pulumi.dynamic import Config, ConfigureRequest

    from tests.deploy.pve_fake import TOKEN_SECRET

    monkeypatch.delenv("PIM_PROXMOX_TOKEN_SECRET", raising=False)
    p = DeploymentProvider()
    p.configure(ConfigureRequest(Config({"pim:proxmoxTokenSecret": TOKEN_SECRET}, "proj")))
    outs = p.create(inputs(image_outs(project), pve_target(pve, pve_cert[0]))).outs
    assert TOKEN_SECRET not in repr(outs)
    p.delete(f"pve/{outs['vmid']}", outs)  # Delete gets only the outputs: the token comes from the config
    assert pve.vms == {}


def test_a_missing_build_is_explained(project: Project, aws: str) -> None:
    from pim.engine.errors import InputError

    image = {**image_outs(project), "manifest_path": "/nonexistent/manifest.json"}
    with pytest.raises(InputError, match="not in PIM's cache any more"):
        DeploymentProvider().create(inputs(image, aws_target(aws)))


def test_proxmox_nodes_added_and_dropped_are_followed_in_place(project: Project, tmp_path: Any, pve_cert: tuple,
                                                              pve_env: str) -> None:
    from tests.deploy.pve_fake import FakePve

    cluster = FakePve(tmp_path / "pve", nodes=["pve1", "pve2"]).start(*pve_cert)
    try:
        p = DeploymentProvider()
        image = image_outs(project)
        one = {k: v for k, v in pve_target(cluster, pve_cert[0]).items() if k != "node"} | {"nodes": ["pve1"]}
        created = p.create(inputs(image, one))
        first = created.outs["vmids"]["pve1"]
        both = {**one, "nodes": ["pve1", "pve2"]}
        assert p.diff(created.id, created.outs, inputs(image, both)).replaces == []
        grown = p.update(created.id, created.outs, inputs(image, both)).outs
        assert grown["vmids"]["pve1"] == first and set(grown["vmids"]) == {"pve1", "pve2"}
        assert cluster.vm_node == {first: "pve1", grown["vmids"]["pve2"]: "pve2"}
        shrunk = p.update(created.id, grown, inputs(image, {**one, "nodes": ["pve2"]})).outs
        assert shrunk["vmids"] == {"pve2": grown["vmids"]["pve2"]} and shrunk["node"] == "pve2"
        assert cluster.vm_node == {grown["vmids"]["pve2"]: "pve2"}  # pve1's template is gone
        assert cluster.node_files["pve1"] == {}  # and its upload
        assert cluster.schema_errors == []
    finally:
        cluster.stop()
