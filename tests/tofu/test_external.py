"""`pim tofu external` through the external program protocol: JSON of strings on stdin,
flat JSON of strings on stdout, a message on stderr and a non-zero exit on error.
(Answers for a built image: tests/e2e/test_tofu_external.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PIM = [sys.executable, "-m", "pim.cli.main", "tofu", "external"]


def external(query: object, cwd: Path, raw: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PIM_CACHE_DIR": str(cwd / "cache")}
    return subprocess.run(PIM, input=raw if raw is not None else json.dumps(query), capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=60)


@pytest.mark.parametrize("raw, message", [
    ("{not json", "is not JSON"),
    ('{"image": 3}', "JSON object of strings"),
    ('["image"]', "JSON object of strings"),
    ('{"image": "x", "colour": "red"}', "unknown query key(s) colour"),
    ('{"config": "pim.yaml"}', 'needs "image"'),
    ('{"image": "x", "mode": "sometimes"}', "mode 'sometimes' is not one of lookup, build"),
])
def test_bad_queries_fail_with_a_message_and_no_result(tmp_path: Path, raw: str, message: str) -> None:
    proc = external(None, tmp_path, raw)
    assert proc.returncode == 2
    assert message in proc.stderr and proc.stderr.startswith("pim tofu external: ")
    assert proc.stdout == ""


def test_a_missing_config_is_named(tmp_path: Path) -> None:
    proc = external({"image": "web", "config": "nowhere.yaml"}, tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "nowhere.yaml" in proc.stderr and "cannot read the config: No such file" in proc.stderr


def test_an_unbuilt_image_is_not_built_by_a_lookup(tmp_path: Path) -> None:
    (tmp_path / "installer.iso").write_bytes(b"\0" * 4096)
    (tmp_path / "answer.txt").write_text("hostname=x\n")
    (tmp_path / "pim.yaml").write_text(
        "images:\n  web:\n    source: {iso: installer.iso}\n    installer:\n      template: answer.txt\n"
        "      boot: {kernel: /k, initrd: /i, params: 'url={{ answer_url }}'}\n"
        "targets:\n  aws: {type: aws, region: us-east-1}\n")
    proc = external({"image": "web"}, tmp_path)
    assert proc.returncode != 0 and proc.stdout == ""
    assert "not built for its current inputs" in proc.stderr and "pim build web" in proc.stderr
    assert not any((tmp_path / "cache").glob("objects/*")), "a lookup must not build"
    proc = external({"image": "web", "target": "gcp"}, tmp_path)
    assert "no target 'gcp'" in proc.stderr and "defined: aws" in proc.stderr
    proc = external({"image": "db"}, tmp_path)
    assert "images.db: no such image; defined: web" in proc.stderr
