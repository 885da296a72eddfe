"""Write a stage's files out while the stage still runs, so that the fsync which
publishes them (`Store.publish`) has little left to wait for.

A build VM's disk skips the guest's flushes (cache=unsafe, `BuildContext.vm_config`),
so the installed system's gigabyte sits in the page cache until publish: on this
kind of machine, 0.7 s of fsync between the install and the boot. Four times a second,
`Writeback` asks the kernel to start writing back every file in the staging folder
(Linux's sync_file_range with SYNC_FILE_RANGE_WRITE: asynchronous, the writer never
waits for it; sync_file_range(2)). Durability still comes from publish's fsync;
this only moves the disk writes earlier, beside the guest's work. Elsewhere (macOS)
it does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from pathlib import Path
from typing import Callable

SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h


@functools.cache
def _sync_file_range() -> Callable[[int], object] | None:
    """sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE) from the C library the process
    already has loaded (as run.py's prctl), or None where it has none (macOS)."""
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    return lambda fd: call(fd, 0, 0, SYNC_FILE_RANGE_WRITE)


class Writeback:
    """Context manager: while it is open, every `interval` seconds, start the writeback
    of every regular file in `folder` (see the module docstring); once more on exit.
    Errors (a file gone meanwhile) are ignored: this only saves time."""

    def __init__(self, folder: Path, interval: float = 0.25):
        self.folder, self.interval = folder, interval
        self._call = _sync_file_range()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="writeback", daemon=True)

    def __enter__(self) -> "Writeback":
        if self._call is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._call is not None:
            self._stop.set()
            self._thread.join()
            self.kick()

    def kick(self) -> None:
        """Start the writeback of every file in the folder now."""
        if self._call is None:
            return
        try:
            files = [p for p in self.folder.iterdir() if p.is_file()]
        except OSError:
            return
        for path in files:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                self._call(fd)
            finally:
                os.close(fd)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.kick()
