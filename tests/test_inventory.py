import json
import os
from pathlib import Path

import pytest

from pim.engine.errors import InputError
from pim.engine.store.inventory import entries, find, gc, remove
from pim.engine.store.objects import Store


def _publish(store: Store, key: str, files: dict[str, str]) -> None:
    staging = store.root / "tmp" / f"s-{key[:6]}"
    staging.mkdir()
    for name, text in files.items():
        (staging / name).write_text(text)
    store.publish(staging, key)


def _final(image: str, key: str, install: str) -> dict[str, str]:
    manifest = {"image": image, "key": key, "created": "2026-01-01T00:00:00+00:00",
                "lineage": {"install": {"key": install}}}
    return {"disk.qcow2": "x" * 5000, "manifest.json": json.dumps(manifest)}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path)
    i1, f_old, f_new = "1" * 64, "2" * 64, "3" * 64
    _publish(s, i1, {"disk.qcow2": "i", "stage.json": json.dumps({"stage": "install", "image": "web"})})
    _publish(s, f_old, _final("web", f_old, i1))
    _publish(s, f_new, _final("web", f_new, i1))
    _publish(s, "4" * 64, {"disk.qcow2": "i", "stage.json": json.dumps({"stage": "install", "image": "web"})})
    _publish(s, "5" * 64, {"disk.qcow2": "b", "stage.json": json.dumps({"stage": "boot", "install": i1})})
    _publish(s, "6" * 64, {"disk.qcow2": "b", "stage.json": json.dumps({"stage": "boot", "install": "4" * 64})})
    s.set_ref("web", f_new, {})
    return s


def test_list_marks_what_the_newest_build_uses(store: Store) -> None:
    kept = {e.key[0]: e.referenced for e in entries(store)}
    assert kept == {"1": True, "2": False, "3": True, "4": False, "5": True, "6": False}
    kinds = {e.key[0]: e.kind for e in entries(store)}
    assert kinds == {"1": "install", "2": "final", "3": "final", "4": "install", "5": "boot", "6": "boot"}


def test_gc_dry_run_then_for_real(store: Store) -> None:
    assert sorted(e.key[0] for e in gc(store, dry_run=True)) == ["2", "4", "6"]
    assert len(entries(store)) == 6
    gc(store)
    assert sorted(e.key[0] for e in entries(store)) == ["1", "3", "5"]
    assert gc(store) == []


def test_find_and_remove(store: Store) -> None:
    assert find(store, "web").key == "3" * 64
    assert find(store, "222222").key == "2" * 64
    with pytest.raises(InputError, match="no image or key"):
        find(store, "db")
    remove(store, find(store, "web"))
    assert store.get_ref("web") is None
    assert "3" * 64 not in {e.key for e in entries(store)}


def test_leftovers_of_dead_builds_are_cleaned(store: Store) -> None:
    dead = store.root / "tmp" / "web-dead"
    dead.mkdir()
    (dead / "owner").write_text("999999999")
    alive = store.root / "tmp" / "web-alive"
    alive.mkdir()
    (alive / "owner").write_text(str(os.getppid()))
    assert store.clean_leftovers() == [dead]
    assert alive.exists() and not dead.exists()
