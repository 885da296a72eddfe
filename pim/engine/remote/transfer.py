"""Pull stage objects from the remote cache into the local store, push them back.

A pulled object is used only when every file has the size and sha256 its index
names, the index and its manifest both carry the requested key, and the objects it
reads (its qcow2 backing, its saved state's disk) are the very ones it was built on
(`uses_ids`). Anything else is a miss: the build makes the object itself.

What a pushed object holds: its files as they are in the store, the build key of an
install object included. That key is no secret beyond the bucket: it logs in only to
guests booted from the cached disks (which whoever reads the bucket holds already),
and generalization removes it from every image (`guestfiles.GENERALIZE`). Manifests
hold masked inputs only (`Emitter.redact_json`).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import pim
from pim.engine.events import Emitter
from pim.engine.remote.s3 import BadIndex, Blob, Bucket, CorruptBlob, RemoteCacheError, RemoteIndex
from pim.engine.store import manifest as manifests
from pim.engine.store.manifest import Manifest
from pim.engine.store.objects import Store

DISK = "disk.qcow2"
LOCAL_ONLY = ("done", manifests.FILE, manifests.LEGACY_STAGE_FILE)
PRIVATE = ("build_key",)  # files ssh wants readable by their owner only


class _Progress:
    """Byte counts as `progress` events, at most every half second."""

    def __init__(self, events: Emitter, stage: str, total: int, what: str):
        self.events, self.stage, self.total, self.what = events, stage, total, what
        self.done, self._last = 0, 0.0

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= 0.5 or self.done >= self.total:
            self._last = now
            self.events.progress(self.stage, self.done, self.total, self.what)


def pull(bucket: Bucket, store: Store, key: str, events: Emitter, held: contextlib.ExitStack) -> Manifest | None:
    """Bring object `key`, and first what it reads, from the remote cache into `store`.

    Returns its manifest once it is published locally; None on a miss, or when the
    remote object cannot be trusted (reported as a warning; nothing is kept). The
    objects are leased in `held`. A file whose stream breaks is resumed where it broke
    (`Bucket.download`). Raises RemoteCacheError when the bucket cannot be read.
    """
    try:
        idx = bucket.index(key)
    except BadIndex as e:
        events.warning(None, f"{e}; building instead")
        return None
    if idx is None:
        return None
    try:
        m = Manifest.model_validate(idx.manifest)
    except ValueError:
        events.warning(idx.stage, f"remote cache: {key[:12]} has an unreadable manifest; building instead")
        return None
    problem = _untrusted(idx, m, key)
    if problem:
        events.warning(m.stage, f"remote cache: {problem}; building instead")
        return None
    for stage, dep in m.reads.items():
        held.enter_context(store.lease(dep))
        base = _local(store, dep) or pull(bucket, store, dep, events, held)
        if base is None or base.id != m.uses_ids.get(stage):
            events.log(m.stage, f"remote cache: {key[:12]} was built on another {stage} object than this "
                                f"machine has; building instead")
            return None
    with store.lock(key):
        if store.has(key):  # pulled or built meanwhile by another process
            return store.manifest(key)
        with store.workdir(f"pull-{key[:12]}") as work:
            staging = work / "object"
            staging.mkdir()
            progress = _Progress(events, m.stage, idx.size, f"pulling {m.stage} {key[:12]}")
            events.log(m.stage, f"pulling {m.stage} from {bucket} ({_mib(idx.size)})")
            try:
                for name, blob in idx.files.items():
                    bucket.download(blob, staging / name, progress, mode=0o600 if name in PRIVATE else 0o644,
                                    log=lambda text: events.log(m.stage, text))
                _attach(store, staging, idx, m)
            except CorruptBlob as e:
                events.warning(m.stage, f"{e}; discarded, building instead")
                return None
            store.publish(staging, m)
    events.log(m.stage, f"pulled {m.stage} {key[:12]}")
    return store.manifest(key)


def _untrusted(idx: RemoteIndex, m: Manifest, key: str) -> str | None:
    """Why the index cannot describe object `key` as it claims, or None."""
    if idx.key != key or m.key != key:
        return f"the object under {key[:12]} says it is {m.key[:12]}"
    if any(not _is_key(k) for k in m.uses.values()):
        return f"{key[:12]} names objects that are not content keys"
    if any(name in LOCAL_ONLY for name in idx.files):
        return f"{key[:12]} carries files no object has ({', '.join(n for n in idx.files if n in LOCAL_ONLY)})"
    if any(b.backing is not None and b.backing not in m.reads for b in idx.files.values()):
        return f"{key[:12]} names a backing object it does not read"
    if m.artifact is not None:
        blob = idx.files.get(m.artifact.file)
        if blob is None or blob.sha256 != m.artifact.sha256:
            return f"{key[:12]}'s artifact digest differs from its manifest's"
    return None


def _is_key(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def _attach(store: Store, staging: Path, idx: RemoteIndex, m: Manifest) -> None:
    """Point each pulled qcow2 at its local backing object, and refuse any other file
    reference in a qcow2 header (a backing or data file the index did not name would
    let a bucket's bytes read files of this host). Raises CorruptBlob."""
    from pim.engine.errors import CommandError
    from pim.engine.qemu import img

    for name, blob in idx.files.items():
        path = staging / name
        if not name.endswith(".qcow2"):
            continue
        try:
            expected = None
            if blob.backing is not None:
                expected = str(store.object(m.reads[blob.backing]) / DISK)
                img.rebase_unsafe(path, Path(expected))
            info = img.info(path)
        except CommandError as e:
            raise CorruptBlob(f"remote cache: {name} of {m.key[:12]} is not a usable qcow2 ({e})") from None
        data_file = info.get("format-specific", {}).get("data", {}).get("data-file")
        if info.get("format") != "qcow2" or info.get("backing-filename") != expected or data_file:
            raise CorruptBlob(f"remote cache: {name} of {m.key[:12]} refers to a file it may not "
                              f"(backing {info.get('backing-filename')!r}, data file {data_file!r})")


def _local(store: Store, key: str) -> Manifest | None:
    if not store.has(key):
        return None
    try:
        return store.manifest(key)
    except manifests.ManifestError:
        return None


@dataclass
class PushReport:
    """What a push did, by key: uploaded, already there, or kept back (and why)."""

    pushed: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    held_back: dict[str, str] = field(default_factory=dict)
    bytes: int = 0
    resumed: int = 0  # bytes of parts an earlier, unfinished push had uploaded already


def lineage_keys(store: Store, key: str) -> list[str]:
    """`key` and every object it uses that the store holds, each after what it uses
    (install first). A final pulled alone has no provision object beside it."""
    order: list[str] = []

    def visit(k: str) -> None:
        if k in order or _local(store, k) is None:
            return
        for dep in store.manifest(k).uses.values():
            visit(dep)
        order.append(k)

    visit(key)
    return order


def push(bucket: Bucket, store: Store, key: str, events: Emitter) -> PushReport:
    """Upload object `key` and the objects it uses that the remote lacks, each index last.

    An object whose key the remote holds from another build (another `id`, found
    before the upload or after losing the race to write the index) is kept, and
    objects that read it are not pushed (they would not load on its bytes). Each
    object is leased while it is read.
    Raises RemoteCacheError; whatever was uploaded before stays unreferenced until
    the next push completes it (blobs already there are skipped).
    """
    report = PushReport()
    other: set[str] = set()
    for k in lineage_keys(store, key):
        with store.lease(k):  # not removed under the upload (a cache hit leases only the final)
            if not store.has(k):
                continue
            m = store.manifest(k)
            try:
                there, uploaded = bucket.index(k), False
            except BadIndex as e:  # not ours to overwrite: a person should look at it
                report.held_back[k] = str(e)
                other.add(k)
                continue
            if there is None:
                blocked = [dep for dep in m.reads.values() if dep in other or dep in report.held_back]
                if blocked:
                    report.held_back[k] = f"it reads {blocked[0][:12]}, which the remote holds from another build"
                    continue
                sent, kept = _push_object(bucket, store, k, m, events)
                report.bytes += sent
                report.resumed += kept
                there, uploaded = bucket.index(k), True  # ours, or another machine's that won the race
            if there is not None and there.manifest.get("id") == m.id:
                (report.pushed if uploaded else report.present).append(k)
            else:
                other.add(k)
                report.held_back[k] = "the remote holds another build of this key"
    m = store.manifest(key)
    if m.image and key not in report.held_back:
        bucket.put_json(bucket.ref_key(m.image), {"key": key, "pushed": manifests.now()})
    return report


def _push_object(bucket: Bucket, store: Store, key: str, m: Manifest, events: Emitter) -> tuple[int, int]:
    """Upload one object's missing blobs, then its index. Returns (bytes of the blobs
    uploaded, bytes of those resumed from an unfinished upload)."""
    from pim.engine.source.fetch import sha256_file

    folder = store.object(key)
    files: dict[str, Blob] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name not in LOCAL_ONLY):
        digest = m.artifact.sha256 if m.artifact and path.name == m.artifact.file else sha256_file(path, store.root)
        backing = next(iter(m.reads)) if path.name == DISK and m.reads else None
        files[path.name] = Blob(sha256=digest, size=path.stat().st_size, backing=backing)
    todo = {name: b for name, b in files.items() if not bucket.exists(bucket.blob_key(b.sha256), b.size)}
    total = sum(b.size for b in todo.values())
    if todo:
        events.log(m.stage, f"pushing {m.stage} {key[:12]} to {bucket} ({_mib(total)})")
    # Its own progress line: the build may be running a later stage meanwhile.
    progress = _Progress(events, "push", total, f"pushing {m.stage} {key[:12]}")
    kept = 0
    for name, blob in todo.items():
        kept += bucket.upload(folder / name, bucket.blob_key(blob.sha256), progress)
    index = RemoteIndex(key=key, stage=m.stage, image=m.image, pushed=manifests.now(), pim_version=pim.__version__,
                        manifest=m.model_dump(mode="json"), files=files)
    if not bucket.put_json(bucket.manifest_key(key), index.model_dump(mode="json"), only_new=True):
        events.log(m.stage, f"{key[:12]} was pushed meanwhile by another machine")
    return total, kept


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


__all__ = ["pull", "push", "PushReport", "lineage_keys", "RemoteCacheError"]
