"""The external-data helper on a built image, and the examples in examples/tofu applied
unchanged under real terraform: hashicorp/aws from the machine's filesystem mirror
against a moto server on 127.0.0.1, hashicorp/external served by a local stand-in.
The image is test_tofu.py's last build (same inputs), so nothing installs again."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.conftest import boto, moto_url  # noqa: F401  (fixture)
from tests.e2e.test_tofu import SCRIPT_V2, amis, pim_workspace
from tests.tofu.tf import REPO, Terraform, aws_mirror, needs_terraform

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def config(fixture_iso: Path, moto_url: str, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    return pim_workspace(tmp_path_factory.mktemp("tofu-ext"), fixture_iso, moto_url, SCRIPT_V2)


def external(query: dict) -> tuple[int, dict, str]:
    proc = subprocess.run([str(Path(sys.executable).parent / "pim"), "tofu", "external"], input=json.dumps(query),
                          capture_output=True, text=True, timeout=1800)
    return proc.returncode, json.loads(proc.stdout) if proc.returncode == 0 else {}, proc.stderr


def test_build_mode_builds_then_lookup_answers_flat_strings(config: Path) -> None:
    code, built, err = external({"config": str(config), "image": "e2e", "mode": "build"})
    assert code == 0, err
    code, found, err = external({"config": str(config), "image": "e2e"})
    assert code == 0, err
    assert found == built and all(isinstance(v, str) for v in found.values())
    assert found["image"] == "e2e" and len(found["key"]) == 64 and Path(found["path"]).is_file()
    assert int(found["size"]) == Path(found["path"]).stat().st_size


def test_lookup_of_an_undeployed_target_names_pim_deploy(config: Path) -> None:
    code, _, err = external({"config": str(config), "image": "e2e", "target": "aws"})
    assert code != 0 and "is not deployed to 'aws'" in err and "pim deploy e2e --target aws" in err


def _example(name: str, tmp_path: Path, pim_cache: Path, runtime_root: Path) -> Terraform:
    if aws_mirror() is None:
        pytest.skip("no filesystem mirror with hashicorp/aws on this machine (the machine image carries one)")
    work = tmp_path / name
    work.mkdir()
    shutil.copy(REPO / "examples/tofu" / name / "main.tf", work / "main.tf")  # unchanged
    tf = Terraform(work, tmp_path / "sandbox", {"PIM_CACHE_DIR": str(pim_cache), "XDG_RUNTIME_DIR": str(runtime_root)},
                   aws=True)
    tf("init", "-input=false")
    return tf


@needs_terraform
def test_the_external_aws_example_feeds_an_instance(config: Path, tmp_path: Path, pim_cache: Path,
                                                    runtime_root: Path, moto_url: str) -> None:  # noqa: F811
    tf = _example("external-aws", tmp_path, pim_cache, runtime_root)
    args = ["-var", f"pim_config={config}", "-var", "image=e2e", "-var", f"aws_endpoint={moto_url}"]
    tf("apply", "-auto-approve", *args, "-var", "mode=build")  # build mode deploys the missing AMI
    out = tf.outputs()
    instance = boto(moto_url, "ec2").describe_instances(InstanceIds=[out["instance_id"]])
    assert instance["Reservations"][0]["Instances"][0]["ImageId"] == out["ami_id"]
    assert amis(moto_url, out["image_key"]) == [out["ami_id"]]
    assert tf("plan", "-detailed-exitcode", *args, ok=(0,)).returncode == 0  # lookup mode: no changes
    tf("destroy", "-auto-approve", *args)
    subprocess.run([str(Path(sys.executable).parent / "pim"), "deploy", "e2e", "--target", "aws", "--delete",
                    "--config", str(config)], check=True, capture_output=True, timeout=600)
    assert amis(moto_url, out["image_key"]) == []


@needs_terraform
def test_the_native_aws_example_builds_deploys_and_destroys(config: Path, tmp_path: Path, pim_cache: Path,
                                                            runtime_root: Path, moto_url: str) -> None:  # noqa: F811
    tf = _example("native-aws", tmp_path, pim_cache, runtime_root)
    args = ["-var", f"pim_config={config}", "-var", "image=e2e", "-var", f"aws_endpoint={moto_url}"]
    tf("apply", "-auto-approve", *args)
    out = tf.outputs()
    instance = boto(moto_url, "ec2").describe_instances(InstanceIds=[out["instance_id"]])
    assert instance["Reservations"][0]["Instances"][0]["ImageId"] == out["ami_id"]
    assert tf("plan", "-detailed-exitcode", *args, ok=(0,)).returncode == 0
    assert "3 destroyed" in tf("destroy", "-auto-approve", *args).stdout
    assert amis(moto_url, out["image_key"]) == []
    assert Path(out["qcow2"]).is_file()


def test_every_example_is_formatted() -> None:
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip("no terraform binary on PATH: `terraform fmt` checks the examples")
    proc = subprocess.run([terraform, "fmt", "-check", "-recursive", str(REPO / "examples/tofu")],
                          capture_output=True, text=True, env={"CHECKPOINT_DISABLE": "1", "HOME": "/nonexistent"})
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_terraform
def test_a_data_external_lookup_under_dev_overrides(config: Path, tmp_path: Path, pim_cache: Path,
                                                    runtime_root: Path) -> None:
    (tmp_path / "main.tf").write_text(
        'data "external" "image" {\n  program = ["pim", "tofu", "external"]\n'
        f'  query   = {{ config = "{config}", image = "e2e" }}\n}}\n'
        'output "result" {\n  value = data.external.image.result\n}\n')
    tf = Terraform(tmp_path, tmp_path / "sandbox", {"PIM_CACHE_DIR": str(pim_cache),
                                                    "XDG_RUNTIME_DIR": str(runtime_root)})  # no init: overrides only
    tf("apply", "-auto-approve")
    code, direct, err = external({"config": str(config), "image": "e2e"})
    assert code == 0, err
    assert tf.outputs()["result"] == direct
