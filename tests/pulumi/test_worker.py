"""The worker that runs builds and deploys for the providers: its log relay, its error
path and what happens to it when the provider process dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pim.engine.errors import InputError
from pim.engine import relay as relay_module
from pim.pulumi_provider import worker


def relay(lines: list) -> worker.Relay:
    return worker.Relay("pim.Image web", lambda level, text: lines.append((level, text)), secrets=["s3cr3t-pw"])


def test_relay_says_stages_logs_and_warnings_and_hides_secrets_and_the_console() -> None:
    lines: list = []
    r = relay(lines)
    r.event({"kind": "stage-begin", "stage": "install", "data": {"cached": True}})
    r.event({"kind": "log", "stage": "provision", "message": "[1:setup] password s3cr3t-pw ok"})
    r.event({"kind": "log", "stage": "install", "message": "kernel boot line", "data": {"source": "console"}})
    r.event({"kind": "warning", "stage": "upload", "message": "retrying"})
    r.event({"kind": "stage-end", "stage": "final"})
    assert lines == [("info", "pim.Image web: install started (cached)"),
                     ("info", "pim.Image web: [provision] [1:setup] password ******** ok"),
                     ("warning", "pim.Image web: upload retrying"),
                     ("info", "pim.Image web: final done")]


def test_relay_throttles_progress_and_says_when_it_is_still_working(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(relay_module, "HEARTBEAT", 0.2)
    lines: list = []
    r = relay(lines)
    for done in range(0, 100, 10):
        r.event({"kind": "progress", "stage": "upload", "message": "blocks", "data": {"done": done, "total": 100}})
    r.event({"kind": "progress", "stage": "upload", "message": "blocks", "data": {"done": 100, "total": 100}})
    assert [t for _, t in lines] == ["pim.Image web: [upload] blocks 0/100 (0%)",
                                     "pim.Image web: [upload] blocks 100/100 (100%)"]
    r.tick()
    assert len(lines) == 2  # said something just now
    time.sleep(0.3)
    r.tick()
    assert lines[-1][1].startswith("pim.Image web: still working (")


def test_an_input_error_in_the_worker_is_an_input_error_here(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIM_CACHE_DIR", str(tmp_path))
    with pytest.raises(InputError, match=r"pim.Image x: spec: 3 problem\(s\)"):
        worker.run("build", {"config": None, "spec": {"x": 1}, "image": "x"}, label="pim.Image x", log=print)


def test_the_worker_stops_when_the_provider_dies(tmp_path: Path) -> None:
    """A provider killed mid-build (Ctrl-C, a crashed engine) takes its worker with it."""
    from tests.pulumi.slow_http import SlowServer

    with SlowServer() as slow:
        (tmp_path / "answer.txt").write_text("x\n")
        job = {"op": "build", "secrets": [], "job": {
            "image": "slow", "base_dir": str(tmp_path),
            "spec": {"source": {"iso": slow.url, "sha256": "0" * 64},
                     "installer": {"template": "answer.txt", "boot": {"kernel": "/k", "initrd": "/i"}}}}}
        # a stand-in provider: starts the worker like worker.run does, then waits to be killed
        parent = subprocess.Popen([sys.executable, "-c", (
            "import json, os, subprocess, sys, time\n"
            "p = subprocess.Popen([sys.executable, '-m', 'pim.pulumi_provider.worker', str(os.getpid())],"
            " stdin=subprocess.PIPE, stdout=subprocess.PIPE)\n"
            "p.stdin.write(sys.argv[1].encode()); p.stdin.close()\n"
            "print(p.pid, flush=True)\n"
            "p.stdout.readline()\n"  # the first event: the build has started
            "print('started', flush=True)\n"
            "time.sleep(600)\n"), json.dumps(job)], stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PIM_CACHE_DIR": str(tmp_path / "cache")})
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert parent.stdout.readline().strip() == "started"
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and _alive(child):
            time.sleep(0.1)
        assert not _alive(child), "the worker outlived the provider"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
