"""The example program (examples/pulumi/__main__.py) under pulumi.runtime.set_mocks (layer c):
what it registers, how the resources are wired, that secrets stay secrets."""

from __future__ import annotations

import asyncio
import runpy
from pathlib import Path
from typing import Any

import pulumi
import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pulumi"
TOKEN = "pve-token-secret-value-123"


class Mocks(pulumi.runtime.Mocks):
    """Answers like the providers would: pim.Image and pim.Deployment outputs, an id for the rest."""

    def __init__(self) -> None:
        self.resources: dict[str, tuple[str, dict[str, Any]]] = {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.resources[args.name] = (args.typ, dict(args.inputs))
        state = dict(args.inputs)
        if args.typ == "pulumi-python:dynamic/pim:Image":
            state.update(content_key="k" * 64, path="/cache/objects/kkk/disk.qcow2", sha256="s" * 64,
                         manifest_path="/cache/objects/kkk/manifest.json")
            return "k" * 64, state
        if args.typ == "pulumi-python:dynamic/pim:Deployment":
            if args.inputs["target"]["type"] == "proxmox":
                state.update(type="proxmox", vmid=123, node="pve")
                return "pve/123", state
            state.update(type="aws", ami_id="ami-0123", ami_ids={"us-east-1": "ami-0123"})
            return "ami-0123", state
        if args.typ == "proxmoxve:index/vmLegacy:VmLegacy":
            state["vm_id"] = 200
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> Any:
        return {}


@pytest.fixture
def program(monkeypatch: pytest.MonkeyPatch) -> tuple[Mocks, dict[str, Any]]:
    monkeypatch.chdir(EXAMPLE)
    mocks = Mocks()
    asyncio.set_event_loop(asyncio.new_event_loop())  # set_mocks needs one; other tests may have closed it
    pulumi.runtime.set_mocks(mocks, project="pim-example", stack="dev", preview=False)
    pulumi.runtime.set_all_config({
        "pim-example:proxmoxUrl": "https://pve.example:8006", "pim-example:proxmoxTokenId": "pim@pve!deploy",
        "pim-example:sshPublicKey": "ssh-ed25519 AAAA test", "pim:proxmoxTokenSecret": TOKEN,
        "aws:region": "eu-west-1",
    }, secret_keys=["pim:proxmoxTokenSecret"])
    return mocks, runpy.run_path(str(EXAMPLE / "__main__.py"))


def _resolved(*outputs: pulumi.Output) -> pulumi.Output:
    return pulumi.Output.all(*outputs)


@pulumi.runtime.test
def test_the_image_comes_from_the_demo_config_with_a_create_timeout(program: tuple) -> Any:
    mocks, g = program

    def check(_: Any) -> None:
        typ, inputs = mocks.resources["demo"]
        assert typ == "pulumi-python:dynamic/pim:Image"
        assert inputs["config"] == str((EXAMPLE / "../demo/pim.yaml").resolve())
        assert Path(inputs["config"]).is_file() and inputs["image"] == "demo"
        assert inputs["timeouts"] == {"create": 3600.0, "update": 3600.0}
        assert "__provider" in inputs
    return g["image"].content_key.apply(check)


@pulumi.runtime.test
def test_deployments_take_the_images_build_and_inline_targets(program: tuple) -> Any:
    mocks, g = program

    def check(_: Any) -> None:
        _, pve = mocks.resources["demo-pve"]
        _, ami = mocks.resources["demo-aws"]
        for inputs in (pve, ami):
            assert inputs["image_key"] == "k" * 64 and inputs["image_name"] == "demo"
            assert inputs["manifest_path"].endswith("manifest.json")
        assert pve["target"]["type"] == "proxmox" and pve["target"]["api_url"] == "https://pve.example:8006"
        assert ami["target"] == {"type": "aws", "region": "eu-west-1", "copy_to": []}
        assert TOKEN not in repr(pve) and TOKEN not in repr(ami)  # the token is stack config, not an input
    return _resolved(g["template"].vmid, g["ami"].ami_id).apply(check)


@pulumi.runtime.test
def test_the_vm_clones_the_template_and_the_instance_boots_the_ami(program: tuple) -> Any:
    mocks, g = program

    def check(_: Any) -> None:
        _, vm = mocks.resources["demo-vm"]
        assert vm["clone"]["vmId"] == 123 and vm["nodeName"] == "pve"
        assert vm["initialization"]["userAccount"]["keys"] == ["ssh-ed25519 AAAA test"]
        _, instance = mocks.resources["demo-ec2"]
        assert instance["ami"] == "ami-0123"
        typ, provider = mocks.resources["pve"]
        assert typ == "pulumi:providers:proxmoxve"
    return _resolved(g["vm"].id, g["instance"].id).apply(check)
