"""`pim route` and `pim builders list` through the real CLI (no connection is made)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.helpers import MINIMAL_FILES, minimal_image, write_config

ARM = {"uri": "ssh://pim@arm.lan", "systems": {"aarch64": "kvm"}, "max_jobs": 2, "speed_factor": 3}


def _pim(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "XDG_CONFIG_HOME": str(home / "config"),
           "XDG_RUNTIME_DIR": str(home / "run"), "PIM_CACHE_DIR": str(home / "cache")}
    return subprocess.run([sys.executable, "-m", "pim.cli.main", *args], capture_output=True, text=True, env=env,
                          timeout=60)


def _config(tmp_path: Path, builders: dict | None) -> Path:
    cfg = write_config(tmp_path / "p", {"arm": minimal_image(arch="aarch64")}, MINIMAL_FILES)
    if builders is not None:
        data = yaml.safe_load(cfg.read_text())
        data["builders"] = builders
        cfg.write_text(yaml.safe_dump(data))
    return cfg


def test_route_sends_aarch64_to_the_arm_builder(tmp_path: Path) -> None:
    run = _pim("route", "arm", "-c", str(_config(tmp_path, {"arm-box": ARM})), "--json", home=tmp_path)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    assert (got["builder"], got["address"], got["accel"], got["warning"]) == ("arm-box", "pim@arm.lan", "kvm", None)


def test_route_without_a_builder_warns_about_emulation(tmp_path: Path) -> None:
    run = _pim("route", "arm", "-c", str(_config(tmp_path, None)), home=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("arm: local (local) under tcg")
    assert "warning: aarch64 is emulated under TCG" in run.stdout and "5 to 20 times slower" in run.stdout


def test_route_overrides_and_an_unknown_builder(tmp_path: Path) -> None:
    cfg = str(_config(tmp_path, {"arm-box": ARM}))
    assert json.loads(_pim("route", "arm", "-c", cfg, "--local", "--json", home=tmp_path).stdout)["builder"] == "local"
    run = _pim("route", "arm", "-c", cfg, "--builder", "nope", home=tmp_path)
    assert run.returncode == 2 and "names builder 'nope', which is not configured" in run.stderr


def test_builders_list_merges_the_user_file(tmp_path: Path) -> None:
    user = tmp_path / "config" / "pim" / "builders.yaml"
    user.parent.mkdir(parents=True)
    user.write_text(yaml.safe_dump({"builders": {"mine": {"uri": "ssh://me@10.1.2.3:2222",
                                                          "systems": {"x86_64": "kvm"}}}}))
    run = _pim("builders", "list", "-c", str(_config(tmp_path, {"arm-box": ARM})), "--json", home=tmp_path)
    assert run.returncode == 0, run.stderr
    listed = {b["name"]: b for b in json.loads(run.stdout)}
    assert set(listed) == {"arm-box", "mine", "local"}
    assert listed["mine"]["address"] == "me@10.1.2.3:2222" and listed["arm-box"]["max_jobs"] == 2


def test_validate_names_an_image_builder_nobody_declared(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "p", {"arm": minimal_image(arch="aarch64", builder="arm-bx")}, MINIMAL_FILES)
    data = yaml.safe_load(cfg.read_text())
    data["builders"] = {"arm-box": ARM}
    cfg.write_text(yaml.safe_dump(data))
    run = _pim("validate", "-c", str(cfg), home=tmp_path)
    assert run.returncode == 2
    assert "images.arm.builder" in run.stderr and "no builder named 'arm-bx' (configured: arm-box, local)" in run.stderr
