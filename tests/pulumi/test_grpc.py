"""Through the Pulumi SDK's own dynamic-provider server (layer b), as `pulumi up` drives it:
`python -m pulumi.dynamic`, properties serialized by pulumi.runtime.rpc, the provider
pickled into `__provider`. Builds are seeded into the cache (the real build is in
tests/e2e/test_pulumi_grpc.py); deploys go to moto and the Proxmox fake."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest

from pim.engine.store.objects import Store
from pim.pulumi_provider.deployment import DeploymentProvider
from pim.pulumi_provider.image import ImageProvider
from pim.pulumi_provider.inputs import UNKNOWN, image_config
from tests.deploy.conftest import boto
from tests.pulumi.conftest import DEPLOYMENT_TYPE, VIRTUAL, Project, make_disk, standard_writes
from tests.pulumi.grpc_client import PROVIDER_KEY, DynamicServer, provider_env, with_provider
from tests.pulumi.seed import seed_build
from tests.pulumi.slow_http import SlowServer
from tests.pulumi.test_deployment_provider import aws_target, inputs, pve_target


def image_props(project: Project, **overrides: Any) -> dict[str, Any]:
    # what pim.Image sends: its inputs, output names as null, the pickled provider
    props = {**project.image_inputs(**overrides), "content_key": None, "path": None, "sha256": None}
    return with_provider(props, ImageProvider())


def test_pickled_provider_is_a_reference_to_an_importable_class() -> None:
    import base64

    blob = base64.b64decode(with_provider({}, ImageProvider())[PROVIDER_KEY])
    assert b"pim.pulumi_provider.image" in blob and b"ImageProvider" in blob and len(blob) < 200


def test_image_lifecycle(project: Project, image_server: DynamicServer) -> None:
    s = image_server
    s.configure({})
    checked, failures = s.check("web", {}, image_props(project))
    assert failures == [] and "content_key" not in checked

    id_, outs = s.create("web", checked)
    assert id_ == project.key == outs["content_key"] and outs[PROVIDER_KEY] == checked[PROVIDER_KEY]
    assert "cache hit" in s.log

    # `pulumi preview` with nothing changed: no change, whatever the pickled provider says
    assert s.diff("web", id_, {**outs, PROVIDER_KEY: "a stale pickle"}, checked).none

    assert s.read("web", id_, outs)[0] == id_

    news, _ = s.check("web", outs, image_props(project, tags={"team": "infra"}))
    diff = s.diff("web", id_, outs, news)
    assert diff.some and diff.replaces == []
    updated = s.update("web", id_, outs, news)
    assert updated["tags"] == {"team": "infra"} and updated["content_key"] == project.key

    (project.folder / "scripts" / "setup.sh").write_text("echo changed\n")
    diff = s.diff("web", id_, updated, news)
    assert diff.some and not diff.delete_before_replace
    # the SDK's own server passes the changed input on as a property path, and logs why
    assert diff.replaces == ["content_key", 'input_digests["provision: scripts/setup.sh content"]']
    assert "rebuild: provision: scripts/setup.sh content changed" in s.log

    s.delete("web", id_, {**updated, "delete_artifact": True})
    assert not Store(project.cache).has(project.key)
    assert s.read("web", id_, updated)[0] == ""  # refresh: gone, so the next up builds it again


def test_image_check_failures_per_field(project: Project, image_server: DynamicServer) -> None:
    spec = {"source": {"iso": "installer.iso"}, "disk_size": "tiny", "cpus": 0,
            "installer": {"template": "answer.txt", "boot": {"kernel": "/k", "initrd": "/i"}}}
    props = with_provider({"spec": spec, "base_dir": str(project.folder), "image": "web"}, ImageProvider())
    _, failures = image_server.check("web", {}, props)
    assert sorted(p for p, _ in failures) == ["spec.cpus", "spec.disk_size"]


def test_image_preview_with_unknown_inputs(project: Project, image_server: DynamicServer) -> None:
    checked, _ = image_server.check("web", {}, image_props(project))
    id_, outs = image_server.create("web", checked)
    news, failures = image_server.check("web", outs, image_props(project, config=UNKNOWN))
    assert failures == []
    diff = image_server.diff("web", id_, outs, news)
    assert diff.some and diff.replaces == ["config"]


def test_image_secrets_stay_out_of_outputs_and_logs(project: Project, image_server: DynamicServer) -> None:
    password = "correct-horse-battery"
    props = project.image_inputs(ssh_password=password)
    disk = make_disk(project.folder / "disk2", "web", VIRTUAL, standard_writes())
    key = seed_build(image_config(props)[0], "web", project.cache, disk.image.path, VIRTUAL)
    checked, _ = image_server.check("web", {}, with_provider(props, ImageProvider()))
    id_, outs = image_server.create("web", checked)
    assert id_ == key
    assert password not in repr(outs) and "ssh_password" not in outs
    assert password not in image_server.log
    assert image_server.diff("web", id_, outs, checked).none  # the keyed hash of the password is stable


def test_custom_timeout_stops_a_long_create(project: Project, image_server: DynamicServer) -> None:
    """customTimeouts.create reaches the provider as the `timeouts` input (the SDK's server drops
    CreateRequest.timeout); at the deadline the build is stopped and Create fails saying why."""
    with SlowServer() as slow:
        spec = {"source": {"iso": slow.url, "sha256": "0" * 64},
                "installer": {"template": "answer.txt", "boot": {"kernel": "/k", "initrd": "/i"}}}
        props = with_provider({"spec": spec, "base_dir": str(project.folder), "image": "slow",
                               "timeouts": {"create": 4}}, ImageProvider())
        checked, failures = image_server.check("slow", {}, props)
        assert failures == []
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            image_server.create("slow", checked, timeout=4)
        took = time.monotonic() - t0
    assert 4 <= took < 30
    assert "did not finish within 4 s (customTimeouts)" in e.value.details()
    log = image_server.log
    assert "[source] download" in log  # progress reached the engine log while it ran
    assert not list((project.cache / "isos").glob("*.iso"))  # nothing that looks finished


# ---------------------------------------------------------------- pim.Deployment

def deployment_props(image: dict[str, Any], target: Any, **extra: Any) -> dict[str, Any]:
    from pim.pulumi_provider.inputs import DEPLOYMENT_OUTPUTS

    return with_provider({**inputs(image, target, **extra), **dict.fromkeys(DEPLOYMENT_OUTPUTS)},
                         DeploymentProvider())


def created_image(project: Project) -> dict[str, Any]:
    return ImageProvider().create(project.image_inputs()).outs


def test_deployment_aws_lifecycle(project: Project, deployment_server: DynamicServer, aws: str) -> None:
    s = deployment_server
    s.configure({})
    image = created_image(project)
    checked, failures = s.check("ami", {}, deployment_props(image, aws_target(aws), tags={"team": "infra"}))
    assert failures == []
    id_, outs = s.create("ami", checked)
    assert id_ == outs["ami_id"] and outs["ami_ids"] == {"us-east-1": id_}
    assert s.diff("ami", id_, outs, checked).none
    assert s.read("ami", id_, outs)[0] == id_

    news, _ = s.check("ami", outs, deployment_props(image, aws_target(aws, copy_to=["eu-west-1"]),
                                                    tags={"team": "infra"}))
    diff = s.diff("ami", id_, outs, news)
    assert diff.some and diff.replaces == []
    updated = s.update("ami", id_, outs, news)
    assert set(updated["ami_ids"]) == {"us-east-1", "eu-west-1"} and updated["ami_id"] == id_

    moved, _ = s.check("ami", updated, deployment_props(image, aws_target(aws, region="us-west-2")))
    diff = s.diff("ami", id_, updated, moved)
    assert diff.replaces == ["target"] and diff.delete_before_replace

    s.delete("ami", id_, updated)
    for region in ("us-east-1", "eu-west-1"):
        assert boto(aws, "ec2", region).describe_images(Owners=["self"], Filters=[
            {"Name": "tag:pim:key", "Values": [project.key]}])["Images"] == []


def test_deployment_proxmox_with_the_token_in_the_stack_config(project: Project, pve: Any, pve_cert: tuple,
                                                               cache: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.deploy.pve_fake import TOKEN_SECRET

    monkeypatch.delenv("PIM_PROXMOX_TOKEN_SECRET", raising=False)
    s = DynamicServer(provider_env(), DEPLOYMENT_TYPE).start()
    try:
        s.configure({"pim:proxmoxTokenSecret": TOKEN_SECRET})
        image = created_image(project)
        checked, failures = s.check("tpl", {}, deployment_props(image, pve_target(pve, pve_cert[0]),
                                                                tags={"env": "prod"}))
        assert failures == []
        id_, outs = s.create("tpl", checked)
        vmid = int(outs["vmid"])
        assert id_ == f"pve/{vmid}" and pve.vms[vmid]["template"] == 1
        assert "env-prod" in pve.vms[vmid]["tags"]
        assert s.read("tpl", id_, outs)[0] == id_
        s.delete("tpl", id_, outs)
        assert pve.vms == {} and pve.schema_errors == []
        assert TOKEN_SECRET not in s.log and TOKEN_SECRET not in repr(outs)
    finally:
        s.stop()
