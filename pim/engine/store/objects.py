"""The content-addressed store under the cache directory.

objects/<key>/     a published stage object; appears only by atomic rename, sealed
                   by `done`, described by `manifest.json` (see `manifest`)
tmp/<dir>/         work in progress, owned by a live process (its pid in `owner`);
                   made in nursery/ and renamed in once its owner is written
locks/<key>        flock per key, exclusive: one build of a key at a time
leases/<name>      flock per object in use, shared: held by every build that reads
                   the object (backing files, boot snapshot, cached ISO); removal
                   takes it exclusively and never waits, so it skips what is in use
refs/<image>.json  the newest final key built for a named image

Nothing here reads the environment: the front end (CLI, Pulumi, Terraform) decides
where the store lives and passes a `Store`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator

from pim.engine.errors import InputError
from pim.engine.run import pid_alive
from pim.engine.store import manifest as manifests
from pim.engine.store.manifest import Manifest


class InUse(InputError):
    """A store object is leased by a running build and cannot be removed now."""


class Store:
    """The store rooted at `root` (created if missing).

    Keys are sha256 hex strings (64 characters); anything else raises ValueError.
    """

    def __init__(self, root: Path):
        self.root = Path(root).resolve()  # qcow2 backing paths into it must be absolute
        for sub in ("objects", "tmp", "locks", "leases", "refs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def object(self, key: str) -> Path:
        """The folder of object `key` (it may not exist)."""
        if not key or len(key) != 64:
            raise ValueError(f"not a content key: {key!r}")
        return self.root / "objects" / key

    def has(self, key: str) -> bool:
        """True when object `key` is published (sealed by its `done` marker)."""
        return (self.object(key) / "done").exists()

    def manifest(self, key: str) -> Manifest:
        """The typed manifest of object `key`; raises manifest.ManifestError when unreadable."""
        return manifests.read(self.object(key))

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold the per-key build lock; a second build of the same key waits here."""
        with open(self.root / "locks" / key, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def lease(self, name: str) -> Iterator[None]:
        """Hold a shared lease on object `name` (a key, or `iso-<sha256>`) while using it.

        Any number of builds hold the same lease at once; `remove` takes it exclusively
        without waiting, so an object in use is skipped, never deleted under a build.
        The lease is released when the block ends or the process dies.
        """
        with open(self._lease_file(name), "a") as f:
            fcntl.flock(f, fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _lease_file(self, name: str) -> Path:
        if "/" in name or not name:
            raise ValueError(f"not a lease name: {name!r}")
        return self.root / "leases" / name

    @contextlib.contextmanager
    def workdir(self, label: str) -> Iterator[Path]:
        """A private scratch folder under tmp/, removed on exit whatever happened."""
        self.clean_leftovers()
        # Made aside with its owner file, then renamed in: a concurrent build's
        # clean_leftovers never sees it without an owner (and takes it for a dead one's).
        nursery = self.root / "nursery"
        nursery.mkdir(exist_ok=True)
        made = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=nursery))
        (made / "owner").write_text(str(os.getpid()))
        path = self.root / "tmp" / made.name
        os.rename(made, path)
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

    def publish(self, staging: Path, manifest: Manifest) -> Path:
        """Seal `staging` with its manifest and move it to objects/<manifest.key> atomically.

        Returns the object's folder. If another process published the same key
        first, its object stays and `staging` is removed.
        """
        key = manifest.key
        if not manifest.id:
            manifest = manifest.model_copy(update={"id": uuid.uuid4().hex})
        manifests.write(staging, manifest)
        (staging / "done").write_text(key)
        for f in staging.iterdir():
            _fsync(f)
        _fsync_dir(staging)  # the files' names too: then the rename, then the rename itself
        target = self.object(key)
        try:
            os.rename(staging, target)
        except OSError:
            if not self.has(key):
                raise
            shutil.rmtree(staging, ignore_errors=True)  # someone else published it first
        _fsync_dir(target.parent)
        return target

    def remove(self, key: str) -> None:
        """Delete object `key`; raises InUse (and deletes nothing) while a build holds it."""
        with open(self.root / "locks" / key, "a") as lock, open(self._lease_file(key), "a") as lease:
            for f in (lock, lease):
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise InUse(f"{key[:12]} is in use by a running build; it was kept") from None
            self._discard(key)
        for image, ref in self.refs().items():
            if ref == key:
                (self.root / "refs" / f"{image}.json").unlink(missing_ok=True)

    def set_aside(self, key: str) -> None:
        """Take object `key` (published or half-removed) out of objects/ so a new one can
        be published under its key. Call it holding `lock(key)`; a build that still has
        the old object's files open keeps reading them."""
        self._discard(key)

    def _discard(self, key: str) -> None:
        # Renamed first, then deleted: an interrupted removal leaves a folder in tmp/
        # (cleaned by the next build), never a half-deleted object under objects/.
        target = self.object(key)
        if not target.exists():
            return
        aside = self.root / "tmp" / f"removed-{key[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.rename(target, aside)
        shutil.rmtree(aside, ignore_errors=True)

    def set_ref(self, image: str, key: str, extra: dict[str, Any]) -> None:
        """Record `key` as the newest build of `image`."""
        ref = self.root / "refs" / f"{image}.json"
        tmp = ref.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, **extra}, indent=2))
        os.replace(tmp, ref)

    def get_ref(self, image: str) -> dict[str, Any] | None:
        """The ref of `image` ({"key": ..., ...}) or None when it was never built."""
        try:
            return json.loads((self.root / "refs" / f"{image}.json").read_text())
        except (OSError, ValueError):
            return None

    def refs(self) -> dict[str, str]:
        """{image: newest final key} for every image with a ref."""
        out = {}
        for ref in (self.root / "refs").glob("*.json"):
            data = self.get_ref(ref.stem)
            if data and "key" in data:
                out[ref.stem] = data["key"]
        return out


def _fsync(path: Path) -> None:
    if path.is_file():
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """fsync a folder, so the names in it survive a crash as its files' data does
    (fsync(2): syncing a file does not sync its directory entry)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
