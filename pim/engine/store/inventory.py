"""What the store holds: listing, removal and garbage collection of built images.

An object is kept by `gc` when the newest build of some image (its ref) uses it,
directly or through the chain of `uses` in the manifests (final -> provision ->
boot snapshot -> install), and a boot snapshot is kept with the install stage it
was made from, so the next script change resumes it. Objects leased by a running
build are never removed: they are skipped and reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pim.engine.errors import InputError
from pim.engine.store.manifest import Manifest, ManifestError
from pim.engine.store.objects import InUse, Store


@dataclass(frozen=True)
class Entry:
    """One published object: `size` in bytes on disk, `last_used` a Unix time."""

    key: str
    kind: str  # install | boot | provision | final | unknown
    image: str | None
    path: Path  # the object's disk.qcow2
    size: int
    created: str | None
    last_used: float
    referenced: bool  # kept by gc: the newest build of its image uses it
    location: str = "local"  # or the builder that keeps it (a remote build not fetched)

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "kind": self.kind, "image": self.image, "path": str(self.path), "size": self.size,
                "created": self.created, "last_used": self.last_used, "referenced": self.referenced,
                "location": self.location}


def _du(path: Path) -> int:
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


def _manifests(store: Store) -> dict[str, Manifest | None]:
    out: dict[str, Manifest | None] = {}
    for obj in (store.root / "objects").iterdir():
        if (obj / "done").exists():
            try:
                out[obj.name] = store.manifest(obj.name)
            except ManifestError:
                out[obj.name] = None  # listed as unknown, never kept
    return out


def _kept(store: Store, manifests: dict[str, Manifest | None]) -> set[str]:
    todo, keep = list(store.refs().values()), set()
    while todo:
        key = todo.pop()
        if key in keep or key not in manifests:
            continue
        keep.add(key)
        m = manifests[key]
        if m is not None:
            todo.extend(m.uses.values())
            todo.extend(ref.key for stage, ref in m.lineage.items() if stage == "install")
    keep |= {k for k, m in manifests.items() if m and m.stage == "boot" and m.uses.get("install") in keep}
    return keep


def entries(store: Store) -> list[Entry]:
    """Every published object, sorted by key."""
    manifests = _manifests(store)
    keep = _kept(store, manifests)
    out = []
    for key in sorted(manifests):
        obj, m = store.object(key), manifests[key]
        out.append(Entry(
            key=key,
            kind=m.stage if m else "unknown",
            image=m.image if m else None,
            path=obj / "disk.qcow2",
            size=_du(obj),
            created=m.created if m else None,
            last_used=(obj / "done").stat().st_mtime,
            referenced=key in keep,
        ))
    return out


def remote_entries(store: Store) -> list[Entry]:
    """Builds that stayed on their builder (`fetch: false`), as recorded by
    `builders.remote.record`; `path` is on that builder. Never touched by gc."""
    import json

    out = []
    folder = store.root / "remote-builds"
    for record in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            r = json.loads(record.read_text())
            out.append(Entry(key=r["key"], kind="final", image=r.get("image"), path=Path(r["path"]),
                             size=int(r["size"]), created=r.get("created"), last_used=record.stat().st_mtime,
                             referenced=False, location=r["builder"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a damaged record only hides that one build from the listing
    return out


def find(store: Store, ref: str) -> Entry:
    """An entry by image name (its newest build) or by key prefix (6+ characters).

    Raises InputError when nothing or more than one object matches.
    """
    key = store.refs().get(ref)
    matches = [e for e in entries(store) if e.key == key or (key is None and len(ref) >= 6 and e.key.startswith(ref))]
    if len(matches) != 1:
        what = "no image or key" if not matches else "more than one key"
        raise InputError(f"{what} matches {ref!r}; see `pim images list`")
    return matches[0]


def remove(store: Store, entry: Entry) -> None:
    """Remove one object; raises objects.InUse while a running build leases it."""
    store.remove(entry.key)


def gc(store: Store, dry_run: bool = False) -> tuple[list[Entry], list[Entry]]:
    """Remove every object that no image's newest build uses.

    Returns (removed, in_use): objects leased by a running build are skipped and
    listed in `in_use`. With dry_run nothing is removed and `in_use` is empty.
    """
    doomed = [e for e in entries(store) if not e.referenced]
    if dry_run:
        return doomed, []
    removed, in_use = [], []
    for e in doomed:
        try:
            store.remove(e.key)
            removed.append(e)
        except InUse:
            in_use.append(e)
    return removed, in_use
