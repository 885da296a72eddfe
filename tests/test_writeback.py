"""Writing a stage's files out while it runs: four times a second and once at the
end, the kernel is asked to start writing back every file in the staging folder."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from pim.engine.store import writeback


@pytest.mark.skipif(sys.platform != "linux", reason="sync_file_range is Linux's; elsewhere Writeback does nothing")
def test_the_c_librarys_sync_file_range_is_called_for_real(tmp_path: Path) -> None:
    call = writeback._sync_file_range()
    assert call is not None, "the C library has sync_file_range on Linux"
    (tmp_path / "disk.qcow2").write_bytes(os.urandom(1 << 20))
    fd = os.open(tmp_path / "disk.qcow2", os.O_RDONLY)
    try:
        assert call(fd) == 0
        assert call(-1) == -1, "a bad descriptor is refused: the call reaches the kernel"
    finally:
        os.close(fd)


def test_every_file_of_the_folder_is_kicked_while_open_and_at_the_end(tmp_path: Path) -> None:
    kicked: list[int] = []  # inode numbers
    lock = threading.Lock()

    def record(fd: int) -> int:
        with lock:
            kicked.append(os.fstat(fd).st_ino)
        return 0

    (tmp_path / "disk.qcow2").write_bytes(b"x")
    wb = writeback.Writeback(tmp_path, interval=0.05)
    wb._call = record
    with wb:
        time.sleep(0.3)
        (tmp_path / "state").write_bytes(b"y")  # a file that appears later is kicked too
        time.sleep(0.3)
        (tmp_path / "sub").mkdir()  # folders are not files
        during = len(kicked)
    disk, state = (os.stat(tmp_path / n).st_ino for n in ("disk.qcow2", "state"))
    assert kicked.count(disk) >= 5 and state in kicked, "kicked over and over while open"
    assert set(kicked[during:]) == {disk, state}, "and once more at the end"
    assert not wb._thread.is_alive()
    writeback.Writeback(tmp_path / "gone").kick()  # a folder that went away: nothing to do, no error
