"""PIM's provider process and its tfplugin6 service, with no image built: the handshake
under real terraform, diagnostics on the right attribute, state upgrades."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pim.tofu.plugin import cty
from pim.tofu.plugin.base import Diag
from pim.tofu.plugin.proto import M
from pim.tofu.plugin.server import MainThread, Service
from pim.tofu.provider import PimProvider
from tests.tofu.tf import Terraform, needs_terraform


MISSING_CONFIG_TF = (
    'terraform {\n  required_providers {\n    pim = { source = "pim.invalid/pim/pim" }\n  }\n}\n'
    'resource "pim_image" "web" {\n  config = "missing.yaml"\n  image  = "web"\n}\n')


def service() -> Service:
    return Service(PimProvider(), MainThread())


def test_the_binary_refuses_to_run_outside_terraform() -> None:
    proc = subprocess.run(["terraform-provider-pim"], capture_output=True, text=True, env={"PATH": _venv_bin()})
    assert proc.returncode == 1 and "Terraform runs it" in proc.stderr and proc.stdout == ""


def _venv_bin() -> str:
    import sys

    return str(Path(sys.executable).parent)


def test_schema_lists_the_resources_and_the_data_source() -> None:
    resp = M["GetProviderSchemaResponse"]()
    service().GetProviderSchema(M["Empty"](), resp)
    resources = {e.key: e.value for e in resp.resource_schemas}
    assert set(resources) == {"pim_image", "pim_deployment"}
    assert [e.key for e in resp.data_source_schemas] == ["pim_image"]
    attrs = {a.name: a for a in resources["pim_image"].block.attributes}
    assert attrs["config"].required and attrs["key"].computed and json.loads(attrs["size"].type) == "number"


def test_upgrade_fills_attributes_an_older_state_lacks() -> None:
    req = M["UpgradeResourceStateRequest"](type_name="pim_image", version=0)
    req.raw_state.json = json.dumps({"config": "pim.yaml", "image": "web", "key": "k" * 64, "size": 12}).encode()
    resp = M["UpgradeResourceStateResponse"]()
    service().UpgradeResourceState(req, resp)
    state = cty.decode(resp.upgraded_state.msgpack)
    assert state["key"] == "k" * 64 and state["size"] == 12 and state["firmware"] is None
    assert set(state) == {a.name for a in PimProvider.resources["pim_image"].schema.attrs}


def test_a_state_from_a_newer_schema_is_refused() -> None:
    req = M["UpgradeResourceStateRequest"](type_name="pim_image", version=7)
    req.raw_state.json = b'{"config": "pim.yaml"}'
    with pytest.raises(Diag, match="newer provider"):
        service().UpgradeResourceState(req, M["UpgradeResourceStateResponse"]())


@needs_terraform
def test_plan_reports_a_bad_config_on_its_attribute(tmp_path: Path) -> None:
    (tmp_path / "main.tf").write_text(MISSING_CONFIG_TF)
    tf = Terraform(tmp_path, tmp_path / "sandbox", {"PIM_CACHE_DIR": str(tmp_path / "cache")})
    proc = tf("plan", ok=(1,))
    assert "missing.yaml" in proc.stderr and "cannot read the config" in proc.stderr
    assert 'config = "missing.yaml"' in proc.stderr  # Terraform points at the attribute


@needs_terraform
def test_the_external_helper_error_reaches_terraform(tmp_path: Path) -> None:
    (tmp_path / "main.tf").write_text(
        'data "external" "img" {\n  program = ["pim", "tofu", "external"]\n'
        '  query   = { config = "nowhere.yaml", image = "web" }\n}\n')
    tf = Terraform(tmp_path, tmp_path / "sandbox", {"PIM_CACHE_DIR": str(tmp_path / "cache")})
    proc = tf("plan", ok=(1,))
    assert "External Program Execution Failed" in proc.stderr and "nowhere.yaml" in proc.stderr


@needs_terraform
def test_a_filesystem_mirror_made_by_pim_tofu_mirror_installs_the_provider(tmp_path: Path) -> None:
    import os

    from tests.tofu.tf import TERRAFORM

    rc = subprocess.run([str(Path(_venv_bin()) / "pim"), "tofu", "mirror", str(tmp_path / "mirror")],
                        capture_output=True, text=True, check=True).stdout
    (tmp_path / "cli.rc").write_text(rc)
    (tmp_path / "home").mkdir()
    (tmp_path / "main.tf").write_text(MISSING_CONFIG_TF)
    env = {**os.environ, "TF_CLI_CONFIG_FILE": str(tmp_path / "cli.rc"), "HOME": str(tmp_path / "home"),
           "CHECKPOINT_DISABLE": "1", "PIM_CACHE_DIR": str(tmp_path / "cache")}
    init = subprocess.run([str(TERRAFORM), "init", "-no-color"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert init.returncode == 0, init.stdout + init.stderr
    assert "Installing pim.invalid/pim/pim v0.1.0" in init.stdout
    plan = subprocess.run([str(TERRAFORM), "plan", "-no-color"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert plan.returncode == 1 and "missing.yaml" in plan.stderr and "cannot read the config" in plan.stderr


IMAGE_TF = (
    'terraform {\n  required_providers {\n    pim = { source = "pim.invalid/pim/pim" }\n  }\n}\n'
    'resource "pim_image" "web" {\n  config = "pim.yaml"\n  image  = "web"\n}\n')


@needs_terraform
@pytest.mark.parametrize("name, new, changed", [
    ("scripts/setup.sh", "echo something else\n", "provision: scripts/setup.sh content"),
    ("installer.iso", "another ISO", "install: ISO sha256"),
    ("answer.txt", "hostname={{ hostname }}\n", "install: answer template answer.txt content"),
])
def test_a_plan_names_the_changed_input_and_replaces_on_it(tmp_path: Path, name: str, new: str, changed: str) -> None:
    """A build in the store (seeded: no QEMU), imported into the state; then one input
    changes and the plan replaces the image on `input_digests`, showing that entry
    old -> new, with a warning that names it."""
    import re

    from pim.engine.config.spec import load_config
    from pim.engine.store.objects import Store
    from tests.helpers import MINIMAL_FILES, minimal_image, write_config
    from tests.pulumi.seed import seed_build

    image = minimal_image(provision=[{"type": "shell", "script": "scripts/setup.sh"}])
    config = write_config(tmp_path, {"web": image}, {**MINIMAL_FILES, "scripts/setup.sh": "echo setting up\n"})
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(b"a stand-in for the artifact")
    cache = tmp_path / "cache"
    key = seed_build(load_config(config), "web", cache, disk, 1 << 30)
    Store(cache).set_ref("web", key, {})
    (tmp_path / "main.tf").write_text(IMAGE_TF)
    tf = Terraform(tmp_path, tmp_path / "sandbox", {"PIM_CACHE_DIR": str(cache)})
    tf("import", "pim_image.web", "pim.yaml:web")
    assert "No changes." in tf("plan", "-detailed-exitcode", ok=(0,)).stdout
    (tmp_path / name).write_text(new)
    proc = tf("plan", "-detailed-exitcode", ok=(2,))
    out = proc.stdout + proc.stderr
    assert "pim_image.web must be replaced" in out
    assert re.search(r"~ input_digests\s+= \{ # forces replacement", out), out
    assert re.search(rf'~ "{re.escape(changed)}"\s+= "[^"]+" -> "[^"]+"', out), out
    assert f"Warning: pim_image web is rebuilt: {changed} changed" in out


def test_a_proxmox_deployment_outputs_the_template_of_every_node() -> None:
    from pim.engine.deploy.model import DeployResult

    resource = PimProvider.resources["pim_deployment"]
    result = DeployResult("pve", "proxmox", "web", "k" * 64, True,
                          {"vmid": 100, "node": "pve1", "volume": "local:import/x.qcow2",
                           "vmids": {"pve1": 100, "pve2": 101}, "volumes": {}}, {})
    values = {"config": "pim.yaml", "image": "web", "target": "pve", "image_key": "k" * 64}
    out = resource._outputs(values, None, result)
    assert out["vmid"] == 100 and out["node"] == "pve1" and out["vmids"] == {"pve1": 100, "pve2": 101}
    types = {a.name: a.type for a in resource.schema.attrs}
    assert set(out) <= set(types) and types["vmids"] == ["map", "number"]
    assert cty.conform(out["vmids"], types["vmids"]) == {"pve1": 100, "pve2": 101}
