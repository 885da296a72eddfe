"""Writing a stage's files out while it runs: the kernel is asked to start writing
back every file in the staging folder, and the dirty pages go down meanwhile."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from pim.engine.store import writeback


def _dirty_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Dirty:"):
            return int(line.split()[1])
    raise AssertionError("no Dirty: line in /proc/meminfo")


@pytest.mark.skipif(sys.platform != "linux", reason="sync_file_range is Linux's; elsewhere Writeback does nothing")
def test_a_written_file_is_on_its_way_to_disk_before_anyone_fsyncs_it(tmp_path: Path) -> None:
    assert writeback._sync_file_range() is not None, "the C library has sync_file_range on Linux"
    data = os.urandom(1 << 20) * 256  # 256 MiB, more than the kernel leaves dirty for long on its own
    with writeback.Writeback(tmp_path, interval=0.2):
        (tmp_path / "disk.qcow2").write_bytes(data)
        deadline = time.monotonic() + 20
        while _dirty_kib() > 64 << 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _dirty_kib() <= 64 << 10, "the file's 256 MiB are still dirty after 20 s"
    assert (tmp_path / "disk.qcow2").read_bytes() == data
    writeback.Writeback(tmp_path / "gone").kick()  # a folder that went away: nothing to do, no error
