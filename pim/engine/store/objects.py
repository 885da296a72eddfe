"""The content-addressed store under the cache directory.

objects/<key>/   a published stage or artifact; appears only by atomic rename
tmp/<dir>/       work in progress, owned by a live process (its pid in `owner`)
locks/<key>      flock per key: one build per key at a time
refs/<image>     the newest final key built for a named image
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from pim.engine.qemu.machine import pid_alive


class Store:
    def __init__(self, root: Path):
        self.root = root
        for sub in ("objects", "tmp", "locks", "refs"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    def object(self, key: str) -> Path:
        if not key or len(key) != 64:
            raise ValueError(f"not a content key: {key!r}")
        return self.root / "objects" / key

    def has(self, key: str) -> bool:
        return (self.object(key) / "done").exists()

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold the per-key lock; a second build of the same key waits here."""
        with open(self.root / "locks" / key, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def workdir(self, label: str) -> Iterator[Path]:
        """A private scratch folder, removed on exit whatever happened."""
        self.clean_leftovers()
        path = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=self.root / "tmp"))
        (path / "owner").write_text(str(os.getpid()))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def clean_leftovers(self) -> list[Path]:
        """Remove scratch folders whose owning process is gone (a killed build)."""
        removed = []
        for d in (self.root / "tmp").iterdir():
            try:
                owner = int((d / "owner").read_text())
            except (OSError, ValueError):
                owner = 0
            if owner == os.getpid() or (owner and pid_alive(owner)):
                continue
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
        return removed

    def publish(self, staging: Path, key: str) -> Path:
        """Move a finished folder into place atomically; a 'done' marker seals it."""
        (staging / "done").write_text(key)
        for f in staging.iterdir():
            _fsync(f)
        target = self.object(key)
        try:
            os.rename(staging, target)
        except OSError:
            if not self.has(key):
                raise
            shutil.rmtree(staging, ignore_errors=True)  # someone else published it first
        return target

    def set_ref(self, image: str, key: str, extra: dict[str, Any]) -> None:
        ref = self.root / "refs" / f"{image}.json"
        tmp = ref.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, **extra}, indent=2))
        os.replace(tmp, ref)

    def get_ref(self, image: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.root / "refs" / f"{image}.json").read_text())
        except (OSError, ValueError):
            return None


def _fsync(path: Path) -> None:
    if path.is_file():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
