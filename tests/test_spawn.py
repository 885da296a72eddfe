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


# ---------------------------------------------------------------- a program that is not installed

def test_a_missing_program_is_an_input_error_naming_the_debian_package(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from pim.engine.errors import InputError, MissingTool
    from pim.engine.run import run

    with pytest.raises(MissingTool, match=r"qemu-img is not installed .*apt-get install qemu-utils") as caught:
        run(["qemu-img", "--version"], env={"PATH": str(tmp_path)})
    assert isinstance(caught.value, InputError) and caught.value.exit_code == 2
    assert run(["qemu-img", "--version"], env={"PATH": "/usr/bin"}).stdout.startswith("qemu-img")
    monkeypatch.setenv("PATH", str(tmp_path))  # without env=, the process's own PATH
    with pytest.raises(MissingTool, match="apt-get install qemu-utils"):
        spawn_detached(["qemu-nbd", "--version"], tmp_path / "log")


def test_qemu_missing_from_path_names_its_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pim.engine.errors import MissingTool
    from pim.engine.qemu import accel

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MissingTool, match="apt-get install qemu-system-x86"):
        accel.choose("x86_64", fresh=True)
    with pytest.raises(MissingTool, match="apt-get install qemu-system-arm"):
        accel.probe_one("tcg", "aarch64")


def test_doctor_names_the_package_of_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    env = {**os.environ, "PATH": str(tmp_path / "bin"), "XDG_RUNTIME_DIR": str(tmp_path),
           "PIM_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-m", "pim.cli.main", "doctor"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1, out.stderr
    assert "qemu-img: not found (apt-get install qemu-utils)" in out.stdout
    assert "qemu-system-x86_64: not found (apt-get install qemu-system-x86)" in out.stdout
