"""Failures end cleanly: no QEMU left, no runtime file, nothing published."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pim.engine.qemu.machine import pid_alive
from tests.e2e.conftest import make_config

pytestmark = pytest.mark.e2e


def _objects(cache: Path) -> set[str]:
    d = cache / "objects"
    return {p.name for p in d.iterdir()} if d.exists() else set()


def _start_build(cfg: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pim.cli.main", "build", "e2e", "-c", str(cfg), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())


def test_typed_boot_then_sigint_during_install_leaves_nothing(fixture_iso: Path, tmp_path: Path, pim_cache: Path,
                                                               runtime_root: Path) -> None:
    # No direct kernel boot: the ISO's own boot loader gets its command typed over QMP send-key.
    typed = {"command": ["auto url={{ answer_url }}<enter>"], "command_delay": 8}
    cfg = make_config(tmp_path, fixture_iso, vars={"extra": "# interrupted build"}, boot=typed)
    before = _objects(pim_cache)
    proc = _start_build(cfg)
    qemu_pid = None
    deadline = time.monotonic() + 300
    for line in proc.stdout:  # wait until the installer is really running
        event = json.loads(line)
        if qemu_pid is None and (runtime_root / "pim" / "e2e.pid").exists():
            qemu_pid = int((runtime_root / "pim" / "e2e.pid").read_text())
        if "answer server: GET answer 200" in event.get("message", ""):
            break
        assert time.monotonic() < deadline, "the installer never fetched its answer file"
    assert qemu_pid is not None and pid_alive(qemu_pid)
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=120)
    stderr = proc.stderr.read()
    assert rc == 130, stderr
    assert not pid_alive(qemu_pid)
    assert [p.name for p in (runtime_root / "pim").iterdir() if p.name.startswith("e2e.")] == []
    assert _objects(pim_cache) == before  # nothing published
    assert list((pim_cache / "tmp").iterdir()) == []


def test_failing_installer_ends_fast_with_console_tail(fixture_iso: Path, tmp_path: Path, pim_cache: Path) -> None:
    cfg = make_config(tmp_path, fixture_iso, vars={"extra": "fail=disk exploded"})
    before = _objects(pim_cache)
    started = time.monotonic()
    proc = _start_build(cfg)
    out, err = proc.communicate(timeout=300)
    elapsed = time.monotonic() - started
    assert proc.returncode == 1, err
    assert "the installer failed" in err
    assert "pim-fixture: installation failed: disk exploded" in err  # the console tail
    assert elapsed < 60, f"failure took {elapsed:.0f}s to surface"
    assert _objects(pim_cache) == before
    result = json.loads(out.strip().splitlines()[-1])
    assert result["kind"] == "result" and result["data"]["ok"] is False
