"""The native provider under real terraform: plan -> apply -> plan (no changes) -> edit a
provisioning script -> plan (replace) -> apply -> destroy, with real builds of the
fixture ISO (the install stage is shared with the other e2e tests through PIM's
cache) and real deploys to a moto server on 127.0.0.1."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import boto, moto_url  # noqa: F401  (fixture)
from tests.e2e.conftest import make_config
from tests.tofu.tf import Terraform, needs_terraform

pytestmark = [pytest.mark.e2e, needs_terraform]

SCRIPT_V1 = "#!/bin/sh\necho v1 > /root/tofu-marker\n"
SCRIPT_V2 = "#!/bin/sh\necho v2 > /root/tofu-marker\n"  # the edit

MAIN_TF = """
terraform {
  required_providers {
    pim = { source = "pim.invalid/pim/pim" }
  }
}
variable "config" {
  type    = string
  default = "pim/pim.yaml"
}
resource "pim_image" "e2e" {
  config = var.config
  image  = "e2e"
}
resource "pim_deployment" "ami" {
  config    = var.config
  image     = pim_image.e2e.image
  target    = "aws"
  image_key = pim_image.e2e.key
}
data "pim_image" "cached" {
  config     = var.config
  image      = "e2e"
  depends_on = [pim_image.e2e]
}
output "key" { value = pim_image.e2e.key }
output "path" { value = pim_image.e2e.path }
output "sha256" { value = pim_image.e2e.sha256 }
output "ami_id" { value = pim_deployment.ami.ami_id }
output "snapshot_id" { value = pim_deployment.ami.snapshot_id }
output "data_key" { value = data.pim_image.cached.key }
"""


def pim_workspace(folder: Path, iso: Path, moto: str, script: str) -> Path:
    """A pim.yaml (fixture image + provision.sh) with an AWS target on the moto server."""
    config = make_config(folder, iso, provision=[{"type": "shell", "script": "provision.sh"}])
    (folder / "provision.sh").write_text(script)
    data = yaml.safe_load(config.read_text())
    data["targets"] = {"aws": {"type": "aws", "region": "us-east-1", "endpoint_url": moto}}
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return config


def amis(moto: str, key: str) -> list[str]:
    images = boto(moto, "ec2").describe_images(Owners=["self"], Filters=[{"Name": "tag:pim:key", "Values": [key]}])
    return [i["ImageId"] for i in images["Images"]]


@pytest.fixture(scope="module")
def tf(fixture_iso: Path, moto_url: str, pim_cache: Path, runtime_root: Path,  # noqa: F811
       tmp_path_factory: pytest.TempPathFactory) -> Terraform:
    work = tmp_path_factory.mktemp("tofu")
    pim_workspace(work / "pim", fixture_iso, moto_url, SCRIPT_V1)
    (work / "main.tf").write_text(MAIN_TF)
    return Terraform(work, tmp_path_factory.mktemp("tf-sandbox"),
                     {"PIM_CACHE_DIR": str(pim_cache), "XDG_RUNTIME_DIR": str(runtime_root)})


@pytest.fixture(scope="module")
def state() -> dict[str, Any]:
    return {}


def test_plan_creates_the_image_with_its_content_key_known(tf: Terraform, state: dict, pim_cache: Path) -> None:
    from pim.engine.config.spec import load_config
    from pim.engine.pipeline.build import content_keys
    from pim.engine.store.objects import Store

    key = content_keys(load_config(tf.workdir / "pim/pim.yaml"), "e2e", Store(pim_cache))["final"]
    out = tf("plan", "-detailed-exitcode", ok=(2,)).stdout
    assert "pim_image.e2e will be created" in out and "pim_deployment.ami will be created" in out
    assert re.search(rf'\+ key\s+= "{key}"', out), out
    assert "Plan: 2 to add, 0 to change, 0 to destroy" in out
    state["key"] = key


def test_apply_builds_and_deploys(tf: Terraform, state: dict, moto_url: str) -> None:  # noqa: F811
    tf("apply", "-auto-approve")
    out = tf.outputs()
    assert out["key"] == out["data_key"] == state["key"]
    assert Path(out["path"]).is_file() and len(out["sha256"]) == 64
    assert amis(moto_url, state["key"]) == [out["ami_id"]]
    state["first"] = out


def test_a_second_plan_has_no_changes(tf: Terraform) -> None:
    out = tf("plan", "-detailed-exitcode", ok=(0,)).stdout
    assert "No changes." in out


def test_a_script_edit_plans_a_replacement_of_the_image_and_its_deployment(tf: Terraform) -> None:
    (tf.workdir / "pim/provision.sh").write_text(SCRIPT_V2)
    proc = tf("plan", "-detailed-exitcode", ok=(2,))
    out = proc.stdout
    # the plan says which input changed: on the attribute, and in a warning
    assert re.search(r'~ "provision: provision.sh content"\s+= "[0-9a-f]{64}" -> "[0-9a-f]{64}"', out), out
    assert "pim_image e2e is rebuilt: provision: provision.sh content changed" in out + proc.stderr
    assert "pim_image.e2e must be replaced" in out and "pim_deployment.ami must be replaced" in out
    assert re.search(r'~ key .*# forces replacement', out), out
    assert "Plan: 2 to add, 0 to change, 2 to destroy" in out


def test_apply_replaces_the_build_and_the_ami(tf: Terraform, state: dict, moto_url: str) -> None:  # noqa: F811
    tf("apply", "-auto-approve")
    out = tf.outputs()
    assert out["key"] != state["key"] and out["data_key"] == out["key"]
    assert amis(moto_url, state["key"]) == [], "the replaced deployment's AMI was not removed"
    assert amis(moto_url, out["key"]) == [out["ami_id"]]
    assert Path(state["first"]["path"]).is_file(), "destroying a pim_image must keep the cached build"
    state["second"] = out
    assert tf("plan", "-detailed-exitcode", ok=(0,)).returncode == 0


def test_destroy_leaves_no_deployment_behind(tf: Terraform, state: dict, moto_url: str) -> None:  # noqa: F811
    out = tf("destroy", "-auto-approve").stdout
    assert "Destroy complete! Resources: 2 destroyed." in out
    assert amis(moto_url, state["second"]["key"]) == []
    snaps = boto(moto_url, "ec2").describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "tag:pim:key", "Values": [state["second"]["key"]]}])["Snapshots"]
    assert snaps == []
    assert Path(state["second"]["path"]).is_file()


def test_import_by_id_then_plan_keeps_the_image(tf: Terraform, state: dict) -> None:
    bad = tf("import", "pim_image.e2e", "no-colon", ok=(1,))
    assert "expected CONFIG:IMAGE" in bad.stdout + bad.stderr
    tf("import", "pim_image.e2e", "pim/pim.yaml:e2e")
    assert state["second"]["key"] in tf("state", "show", "pim_image.e2e").stdout
    out = tf("plan", "-detailed-exitcode", ok=(2,)).stdout
    assert "pim_deployment.ami will be created" in out
    assert "pim_image.e2e will be" not in out and "pim_image.e2e must be" not in out
    assert "Plan: 1 to add, 0 to change, 0 to destroy" in out  # the deployment only


def test_a_deployment_imports_by_id_and_destroy_removes_it(tf: Terraform, state: dict,
                                                           moto_url: str) -> None:  # noqa: F811
    tf("apply", "-auto-approve")
    ami = tf.outputs()["ami_id"]
    tf("state", "rm", "pim_deployment.ami")
    assert tf("plan", "-detailed-exitcode", ok=(2,)).returncode == 2  # forgotten: Terraform would create it
    tf("import", "pim_deployment.ami", "pim/pim.yaml:e2e:aws")
    assert re.search(rf'ami_id\s+= "{ami}"', tf("state", "show", "pim_deployment.ami").stdout)
    assert tf("plan", "-detailed-exitcode", ok=(0,)).returncode == 0
    tf("destroy", "-auto-approve")
    assert amis(moto_url, state["second"]["key"]) == []
