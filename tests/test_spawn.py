"""spawn_detached: a long-lived child in its own session that dies with PIM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pim.engine.run import spawn_detached


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_child_runs_the_command_in_its_own_session_and_dies_with_a_threaded_parent(tmp_path: Path) -> None:
    # The parent has other threads running (as the gRPC providers do) when it spawns.
    script = textwrap.dedent(f"""
        import threading, time, os, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from pim.engine.run import spawn_detached
        for _ in range(4):
            threading.Thread(target=lambda: [sum(range(1000)) for _ in iter(int, 1)], daemon=True).start()
        p = spawn_detached(["sleep", "60"], __import__("pathlib").Path({str(tmp_path / "log")!r}))
        print(p.pid, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        deadline = time.monotonic() + 5
        while Path(f"/proc/{child}/comm").read_text().strip() != "sleep" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert Path(f"/proc/{child}/comm").read_text().strip() == "sleep"  # exec'd: the pid is the command's
        assert os.getsid(child) == child != os.getsid(parent.pid)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    assert _gone(child, 5), "the child outlived its parent"


def test_output_goes_to_the_log(tmp_path: Path) -> None:
    proc = spawn_detached(["sh", "-c", "echo hello from the child"], tmp_path / "log")
    assert proc.wait(timeout=10) == 0
    assert (tmp_path / "log").read_text() == "hello from the child\n"
