"""Build slots held across processes with real flock, and freed when a holder dies."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pim.engine.builders.slots import running, slot

HOLD = """
import sys, time
from pathlib import Path
from pim.engine.builders.slots import slot
with slot(Path(sys.argv[1]), int(sys.argv[2])) as n:
    print(n, flush=True)
    time.sleep(60)
"""


def _holder(root: Path, jobs: int) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(root), str(jobs)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def test_slots_are_shared_by_processes_and_freed_by_death(tmp_path: Path) -> None:
    first, n1 = _holder(tmp_path, 2)
    second, n2 = _holder(tmp_path, 2)
    try:
        assert {n1, n2} == {0, 1} and running(tmp_path, 2) == 2
        told: list[int] = []
        start = time.monotonic()
        first.send_signal(signal.SIGKILL)  # the kernel drops its lock

        with slot(tmp_path, 2, told.append) as n:
            assert n == n1 and time.monotonic() - start < 5
            assert running(tmp_path, 2) == 2
    finally:
        for p in (first, second):
            p.kill()
            p.wait()
    assert running(tmp_path, 2) == 0


def test_a_full_builder_makes_the_build_wait_and_say_so(tmp_path: Path) -> None:
    holder, _ = _holder(tmp_path, 1)
    told: list[int] = []
    try:
        import threading

        threading.Timer(1.0, holder.kill).start()
        start = time.monotonic()
        with slot(tmp_path, 1, told.append):
            waited = time.monotonic() - start
    finally:
        holder.kill()
        holder.wait()
    assert told == [1] and waited >= 0.9


def test_max_jobs_below_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        with slot(tmp_path, 0):
            pass
