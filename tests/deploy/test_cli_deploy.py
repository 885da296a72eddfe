"""`pim deploy` end to end: the newest build from the store to moto, again, check, delete."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.deploy.conftest import Disk
from tests.helpers import MINIMAL_FILES, minimal_image, write_config

PIM = [sys.executable, "-m", "pim.cli.main"]


def _store_build(cache: Path, disk: Disk) -> None:
    """What `pim build` leaves: objects/<key>/ with disk and manifest, and refs/<image>.json."""
    image = disk.image
    obj = cache / "objects" / image.key
    obj.mkdir(parents=True)
    shutil.copy(image.path, obj / "disk.qcow2")
    manifest = {"image": image.name, "key": image.key, "lineage": image.lineage,
                "artifact": {"sha256": image.sha256, "size": image.size, "virtual_size": image.virtual_size},
                "inputs": {"arch": image.arch, "firmware": image.firmware}}
    (obj / "manifest.json").write_text(json.dumps(manifest))
    (obj / "done").write_text(image.key)
    (cache / "refs").mkdir(parents=True, exist_ok=True)
    (cache / "refs" / f"{image.name}.json").write_text(json.dumps({"key": image.key, "path": str(obj / "disk.qcow2")}))


def _config(folder: Path, aws_url: str) -> Path:
    cfg = write_config(folder, {"demo": minimal_image()}, MINIMAL_FILES)
    data = yaml.safe_load(cfg.read_text())
    data["targets"] = {"aws": {"type": "aws", "region": "us-east-1", "copy_to": ["eu-west-1"],
                               "endpoint_url": aws_url}}
    cfg.write_text(yaml.safe_dump(data))
    return cfg


def _pim(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PIM_CACHE_DIR": str(cache)}
    return subprocess.run([*PIM, *args], capture_output=True, text=True, env=env, timeout=120)


def test_deploy_redeploy_check_delete(aws: str, disk: Disk, tmp_path: Path) -> None:
    cache, cfg = tmp_path / "cache", _config(tmp_path / "cfg", aws)
    _store_build(cache, disk)
    first = _pim("deploy", "demo", "--target", "aws", "-c", str(cfg), cache=cache)
    assert first.returncode == 0, first.stderr
    out = json.loads(first.stdout)
    assert out["created"] is True and out["key"] == disk.image.key
    assert set(out["resources"]["regions"]) == {"us-east-1", "eu-west-1"}
    assert "created" in first.stderr

    again = _pim("deploy", "demo", "--target", "aws", "-c", str(cfg), "--json", cache=cache)
    result = [json.loads(line) for line in again.stdout.splitlines()][-1]
    assert again.returncode == 0 and result["kind"] == "result" and result["data"]["created"] is False
    assert result["data"]["resources"] == out["resources"]

    assert _pim("deploy", "demo", "-t", "aws", "-c", str(cfg), "--check", cache=cache).returncode == 0
    gone = _pim("deploy", "demo", "-t", "aws", "-c", str(cfg), "--delete", cache=cache)
    assert gone.returncode == 0, gone.stderr
    assert out["resources"]["regions"]["us-east-1"]["ami"] in json.loads(gone.stdout)["removed"]
    check = _pim("deploy", "demo", "-t", "aws", "-c", str(cfg), "--check", cache=cache)
    assert check.returncode == 1 and "not deployed" in check.stderr


def test_unknown_target_and_unbuilt_image_are_input_errors(aws: str, tmp_path: Path) -> None:
    cache, cfg = tmp_path / "cache", _config(tmp_path / "cfg", aws)
    out = _pim("deploy", "demo", "--target", "nope", "-c", str(cfg), cache=cache)
    assert out.returncode == 2 and "targets.nope" in out.stderr and "aws" in out.stderr
    out = _pim("deploy", "demo", "--target", "aws", "-c", str(cfg), cache=cache)
    assert out.returncode == 2 and "pim build demo" in out.stderr
