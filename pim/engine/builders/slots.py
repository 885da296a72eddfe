"""Build slots: at most `max_jobs` builds at once on one builder, whoever started them.

Slots are files under the builder's store (`slots/<n>`), each held with an exclusive
flock by the process that builds. Every PIM process on that machine (CLI builds,
Terraform and Pulumi providers, remote clients' agents) draws from the same files, so
the limit holds across processes; the kernel drops a dead process's lock, so a
killed build never keeps its slot. A build that finds every slot taken waits (its
wait is interruptible) and says so once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Callable, Iterator

POLL = 0.25  # seconds between looks while every slot is taken


def _dir(root: Path) -> Path:
    path = Path(root) / "slots"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def slot(root: Path, max_jobs: int, waiting: Callable[[int], None] | None = None) -> Iterator[int]:
    """Hold one of the `max_jobs` slots of the store at `root` while the block runs;
    yields its number (0-based). `waiting(max_jobs)` is called once if every slot is
    taken. Raises ValueError for max_jobs < 1."""
    if max_jobs < 1:
        raise ValueError(f"max_jobs must be at least 1, not {max_jobs}")
    folder, told = _dir(root), False
    while True:
        for n in range(max_jobs):
            fd = os.open(folder / str(n), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
                yield n
                return
            finally:
                os.close(fd)  # closing the last descriptor releases the lock
        if not told and waiting is not None:
            waiting(max_jobs)
            told = True
        time.sleep(POLL)


def running(root: Path, max_jobs: int) -> int:
    """How many of the first `max_jobs` slots of the store at `root` are held now."""
    folder, held = _dir(root), 0
    for n in range(max_jobs):
        path = folder / str(n)
        if not path.exists():
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            held += 1
        finally:
            os.close(fd)
    return held
