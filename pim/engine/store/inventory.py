"""What the store holds: listing, removal and garbage collection of built images."""

from __future__ import annotations

import fcntl
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pim.engine.errors import InputError
from pim.engine.store.objects import Store


@dataclass(frozen=True)
class Entry:
    key: str
    kind: str  # final | install
    image: str | None
    path: Path
    size: int  # bytes on disk
    created: str | None
    last_used: float
    referenced: bool  # the newest build of its image (or a stage it uses)

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "kind": self.kind, "image": self.image, "path": str(self.path), "size": self.size,
                "created": self.created, "last_used": self.last_used, "referenced": self.referenced}


def _du(path: Path) -> int:
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


def _refs(store: Store) -> dict[str, str]:
    out = {}
    for ref in (store.root / "refs").glob("*.json"):
        data = store.get_ref(ref.stem)
        if data and "key" in data:
            out[ref.stem] = data["key"]
    return out


def entries(store: Store) -> list[Entry]:
    refs = _refs(store)
    keep: set[str] = set(refs.values())
    manifests: dict[str, dict[str, Any]] = {}
    for obj in (store.root / "objects").iterdir():
        if (obj / "manifest.json").exists():
            manifests[obj.name] = json.loads((obj / "manifest.json").read_text())
    for key in list(keep):
        if key in manifests:
            keep.add(manifests[key]["lineage"]["install"]["key"])
    stages: dict[str, dict[str, Any]] = {}
    for obj in (store.root / "objects").iterdir():
        if obj.name not in manifests and (obj / "stage.json").exists():
            stages[obj.name] = json.loads((obj / "stage.json").read_text())
    # a boot snapshot is kept with the install stage it was made from
    keep |= {key for key, st in stages.items() if st.get("stage") == "boot" and st.get("install") in keep}
    out = []
    for obj in sorted((store.root / "objects").iterdir()):
        if not (obj / "done").exists():
            continue
        m = manifests.get(obj.name)
        stage = stages.get(obj.name, {})
        out.append(Entry(
            key=obj.name,
            kind="final" if m else stage.get("stage", "unknown"),
            image=m["image"] if m else stage.get("image"),
            path=obj / "disk.qcow2",
            size=_du(obj),
            created=m["created"] if m else None,
            last_used=(obj / "done").stat().st_mtime,
            referenced=obj.name in keep,
        ))
    return out


def find(store: Store, ref: str) -> Entry:
    """An entry by image name (its newest build) or by key prefix."""
    refs = _refs(store)
    key = refs.get(ref)
    matches = [e for e in entries(store) if e.key == key or (key is None and len(ref) >= 6 and e.key.startswith(ref))]
    if len(matches) != 1:
        what = "no image or key" if not matches else "more than one key"
        raise InputError(f"{what} matches {ref!r}; see `pim images list`")
    return matches[0]


def remove(store: Store, entry: Entry) -> None:
    with open(store.root / "locks" / entry.key, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"{entry.key[:12]} is in use by a running build; try again when it ends") from None
        shutil.rmtree(entry.path.parent)
    for image, key in _refs(store).items():
        if key == entry.key:
            (store.root / "refs" / f"{image}.json").unlink(missing_ok=True)


def gc(store: Store, dry_run: bool = False) -> list[Entry]:
    """Remove every object that no image's newest build references."""
    doomed = [e for e in entries(store) if not e.referenced]
    if not dry_run:
        for e in doomed:
            try:
                remove(store, e)
            except InputError:
                pass  # in use: left for the next gc
    return doomed
