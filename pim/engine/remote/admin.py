"""Housekeeping of the remote cache: list what it holds, prune what nobody needs, and
check that the bucket can be read and written (`pim doctor`).

Prune keeps every object the newest pushed build of each image references (its
final and, through `uses`, everything it was built from), and anything pushed within
the age limit with everything it is built on. It removes manifests first (the object is gone at once for every
reader), then blobs no remaining manifest names, and aborts multipart uploads left
unfinished before the limit; a blob younger than the limit is kept
whatever refers to it, so a push in progress (blobs up, index not yet) loses nothing.
"""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass, field

from pim.engine.remote.s3 import BadIndex, Bucket, RemoteCacheError, RemoteIndex


@dataclass(frozen=True)
class RemoteEntry:
    """One object in the remote cache: size in bytes, push time (UTC), and whether
    the newest build of some image references it (`kept`)."""

    key: str
    stage: str
    image: str | None
    size: int
    pushed: datetime.datetime
    kept: bool
    blobs: frozenset[str] = field(default_factory=frozenset)

    def to_json(self) -> dict[str, object]:
        return {"key": self.key, "stage": self.stage, "image": self.image, "size": self.size,
                "pushed": self.pushed.isoformat(timespec="seconds"), "kept": self.kept}


def _indexes(bucket: Bucket) -> dict[str, tuple[RemoteIndex | None, datetime.datetime]]:
    out: dict[str, tuple[RemoteIndex | None, datetime.datetime]] = {}
    for obj in bucket.list("manifests/"):
        name = obj["Key"].rsplit("/", 1)[-1]
        if name.endswith(".json"):
            key = name[: -len(".json")]
            try:
                out[key] = (bucket.index(key), obj["LastModified"])
            except BadIndex:
                out[key] = (None, obj["LastModified"])
    return out


def _kept(bucket: Bucket, indexes: dict[str, tuple[RemoteIndex | None, datetime.datetime]],
          also: set[str] = frozenset()) -> set[str]:  # type: ignore[assignment]
    """What the newest build of each image uses (refs/ and their `uses` chains), and
    what the objects in `also` use."""
    todo = list(also)
    for obj in bucket.list("refs/"):
        try:
            ref = bucket.get_json(obj["Key"])
        except BadIndex:
            continue
        if isinstance(ref, dict) and isinstance(ref.get("key"), str):
            todo.append(ref["key"])
    kept: set[str] = set()
    while todo:
        key = todo.pop()
        if key in kept:
            continue
        kept.add(key)
        idx = indexes.get(key, (None, None))[0]
        if idx is not None:
            todo.extend(str(k) for k in idx.manifest.get("uses", {}).values())
    return kept


def entries(bucket: Bucket) -> list[RemoteEntry]:
    """Every object the remote cache holds, newest push first. Raises RemoteCacheError."""
    indexes = _indexes(bucket)
    return _entries(indexes, _kept(bucket, indexes))


def _entries(indexes: dict[str, tuple[RemoteIndex | None, datetime.datetime]], kept: set[str]) -> list[RemoteEntry]:
    out = []
    for key, (idx, modified) in indexes.items():
        out.append(RemoteEntry(
            key=key, stage=idx.stage if idx else "unreadable", image=idx.image if idx else None,
            size=idx.size if idx else 0, pushed=modified, kept=key in kept,
            blobs=frozenset(b.sha256 for b in idx.files.values()) if idx else frozenset()))
    return sorted(out, key=lambda e: e.pushed, reverse=True)


@dataclass
class PruneReport:
    """Objects removed (or that would be, on a dry run), and blobs with their bytes."""

    removed: list[RemoteEntry]
    blobs: int
    bytes: int
    aborted: int = 0  # unfinished multipart uploads


def prune(bucket: Bucket, older_than: float, dry_run: bool = False,
          now: datetime.datetime | None = None) -> PruneReport:
    """Remove objects pushed more than `older_than` seconds ago that no image's newest
    build references, then the blobs only they used. Raises RemoteCacheError."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    cutoff = now - datetime.timedelta(seconds=older_than)
    indexes = _indexes(bucket)
    # Young objects stay, and so does everything they are built on.
    keep = _kept(bucket, indexes, {k for k, (_, pushed) in indexes.items() if pushed >= cutoff})
    all_entries = _entries(indexes, keep)
    doomed = [e for e in all_entries if not e.kept]
    doomed_keys = {e.key for e in doomed}
    still_named = set().union(*(e.blobs for e in all_entries if e.key not in doomed_keys))
    blobs = [(o["Key"], o["Size"]) for o in bucket.list("blobs/sha256/")
             if o["Key"].rsplit("/", 1)[-1] not in still_named and o["LastModified"] < cutoff]
    if not dry_run:
        bucket.delete([bucket.manifest_key(e.key) for e in doomed])
        bucket.delete([k for k, _ in blobs])
    aborted = bucket.abort_unfinished(cutoff, dry_run)
    return PruneReport(doomed, len(blobs), sum(size for _, size in blobs), aborted)


def check(bucket: Bucket) -> str:
    """Write, read back and delete a probe object under the prefix; returns a line
    saying what worked. Raises RemoteCacheError naming the step that failed."""
    probe = f"{bucket.prefix}doctor/{uuid.uuid4().hex}.json"
    token = uuid.uuid4().hex
    bucket.put_json(probe, {"probe": token})
    try:
        got = bucket.get_json(probe)
        if not isinstance(got, dict) or got.get("probe") != token:
            raise RemoteCacheError(f"remote cache {bucket}: a probe object written was not read back")
    finally:
        bucket.delete([probe])
    count = sum(1 for _ in bucket.list("manifests/"))
    return f"{bucket}: readable and writable, {count} object(s)"
