"""The CLI's contract: exit codes and messages, with no VM needed."""

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import MINIMAL_FILES, minimal_image, write_config

PIM = [sys.executable, "-m", "pim.cli.main"]


def _pim(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*PIM, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_validate_lists_three_different_mistakes(tmp_path: Path) -> None:
    image = minimal_image(cpus=0, firmware="coreboot")
    image["installer"]["template"] = "missing.j2"
    cfg = write_config(tmp_path, {"web": image}, MINIMAL_FILES)
    out = _pim("validate", "-c", str(cfg))
    assert out.returncode == 2
    assert "3 problem(s)" in out.stderr
    assert "images.web.cpus" in out.stderr and "greater than or equal to 1" in out.stderr
    assert "images.web.firmware" in out.stderr and "'coreboot'" in out.stderr
    assert "images.web.installer.template" in out.stderr and "missing.j2" in out.stderr


def test_validate_ok(tmp_path: Path) -> None:
    out = _pim("validate", "-c", str(write_config(tmp_path, {"web": minimal_image()}, MINIMAL_FILES)))
    assert out.returncode == 0 and "OK" in out.stderr


def test_schema_is_json_schema() -> None:
    out = _pim("schema")
    assert out.returncode == 0
    schema = json.loads(out.stdout)
    assert "ImageSpec" in schema["$defs"]


def test_checksum_mismatch_exits_2_naming_both_hashes(tmp_path: Path) -> None:
    import hashlib

    image = minimal_image(source={"iso": "installer.iso", "sha256": "ab" * 32})
    cfg = write_config(tmp_path, {"web": image}, MINIMAL_FILES)
    actual = hashlib.sha256(MINIMAL_FILES["installer.iso"].encode()).hexdigest()
    out = _pim("build", "web", "-c", str(cfg))
    assert out.returncode == 2
    assert "ab" * 32 in out.stderr and actual in out.stderr


def test_unknown_image_and_missing_config(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"web": minimal_image()}, MINIMAL_FILES)
    out = _pim("build", "db", "-c", str(cfg))
    assert out.returncode == 2 and "defined: web" in out.stderr
    out = _pim("validate", "-c", str(tmp_path / "nope.yaml"))
    assert out.returncode == 2 and "cannot read" in out.stderr


def test_an_error_given_up_after_retries_says_so_on_the_command_line(capsys) -> None:  # type: ignore[no-untyped-def]
    from pim.cli.common import fail
    from pim.engine.deploy.model import DeployError
    from pim.engine.retry import Policy, retrying

    def upload() -> None:
        raise ConnectionResetError("reset by peer")

    try:
        try:
            retrying(Policy("quick", attempts=2, first_wait=0.01, max_wait=0.01), upload,
                     transient=lambda e: True, what="upload", sleep=lambda s: None)
        except ConnectionResetError as e:
            raise DeployError(f"upload failed: {e}") from None  # as the deploy code wraps it
    except DeployError as e:
        code = fail(e).exit_code
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "error: upload failed: reset by peer"
    assert err[1].strip().startswith("gave up after 2 tries") and "quick" in err[1]
    assert code == 1
