"""The store's listing, removal, garbage collection, leases and manifest reader."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pim.engine.errors import InputError
from pim.engine.store import manifest as manifests
from pim.engine.store.inventory import entries, find, gc, remove
from pim.engine.store.manifest import Artifact, Manifest, ManifestError, StageRef
from pim.engine.store.objects import InUse, Store

K = {c: c * 64 for c in "123456789"}


def _publish(store: Store, m: Manifest) -> None:
    staging = store.root / "tmp" / f"s-{m.key[:6]}"
    staging.mkdir()
    (staging / "disk.qcow2").write_text("x" * 5000)
    store.publish(staging, m)


def _stage(stage: str, key: str, **uses: str) -> Manifest:
    return Manifest(stage=stage, image="web", key=key, uses=uses)


def _final(key: str, provision: str, install: str) -> Manifest:
    return Manifest(stage="final", image="web", key=key, created="2026-01-01T00:00:00+00:00",
                    uses={"provision": provision},
                    lineage={"install": StageRef(key=install), "provision": StageRef(key=provision)},
                    artifact=Artifact(sha256="0" * 64, size=5000, virtual_size=1 << 30))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """1 install <- 5 boot <- 7 provision <- 3 final (newest of web);
    1 <- 8 provision <- 2 final (older); 4 install <- 6 boot (unused)."""
    s = Store(tmp_path)
    _publish(s, _stage("install", K["1"]))
    _publish(s, _stage("boot", K["5"], install=K["1"]))
    _publish(s, _stage("provision", K["7"], boot=K["5"]))
    _publish(s, _stage("provision", K["8"], install=K["1"]))
    _publish(s, _final(K["2"], K["8"], K["1"]))
    _publish(s, _final(K["3"], K["7"], K["1"]))
    _publish(s, _stage("install", K["4"]))
    _publish(s, _stage("boot", K["6"], install=K["4"]))
    s.set_ref("web", K["3"], {})
    return s


def test_list_marks_what_the_newest_build_uses(store: Store) -> None:
    kept = {e.key[0]: e.referenced for e in entries(store)}
    assert kept == {"1": True, "2": False, "3": True, "4": False, "5": True, "6": False, "7": True, "8": False}
    kinds = {e.key[0]: e.kind for e in entries(store)}
    assert kinds == {"1": "install", "2": "final", "3": "final", "4": "install", "5": "boot", "6": "boot",
                     "7": "provision", "8": "provision"}


def test_gc_dry_run_then_for_real(store: Store) -> None:
    removed, in_use = gc(store, dry_run=True)
    assert sorted(e.key[0] for e in removed) == ["2", "4", "6", "8"] and in_use == []
    assert len(entries(store)) == 8
    gc(store)
    assert sorted(e.key[0] for e in entries(store)) == ["1", "3", "5", "7"]
    assert gc(store) == ([], [])


def test_gc_and_rm_skip_what_a_build_leases(store: Store) -> None:
    with store.lease(K["8"]), store.lease(K["3"]):
        removed, in_use = gc(store)
        assert sorted(e.key[0] for e in removed) == ["2", "4", "6"]
        assert [e.key[0] for e in in_use] == ["8"]
        with pytest.raises(InUse, match="in use by a running build"):
            remove(store, find(store, "web"))
        assert store.has(K["8"]) and store.has(K["3"])
    remove(store, find(store, "web"))
    assert not store.has(K["3"])


def test_a_lease_held_by_another_process_is_respected(store: Store, tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from pim.engine.store.objects import Store
        with Store(Path({str(store.root)!r})).lease({K['8']!r}):
            print("held", flush=True)
            sys.stdin.readline()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InUse):
            store.remove(K["8"])
    finally:
        holder.communicate("\n", timeout=30)
    store.remove(K["8"])  # released when the holder ended
    assert not store.has(K["8"])


def test_find_and_remove(store: Store) -> None:
    assert find(store, "web").key == K["3"]
    assert find(store, "222222").key == K["2"]
    with pytest.raises(InputError, match="no image or key"):
        find(store, "db")
    remove(store, find(store, "web"))
    assert store.get_ref("web") is None
    assert K["3"] not in {e.key for e in entries(store)}


def test_manifests_of_the_first_release_are_read_and_migrated(tmp_path: Path) -> None:
    """Objects written before manifests had a schema version: finals with
    manifest.json, install and boot stages with stage.json."""
    store = Store(tmp_path)
    for key, files in {
        K["1"]: {"stage.json": {"stage": "install", "image": "web", "key": K["1"], "seconds": 20.5}},
        K["5"]: {"stage.json": {"stage": "boot", "image": "web", "key": K["5"], "install": K["1"]}},
        K["3"]: {"manifest.json": {
            "pim_version": "0.1.0", "image": "web", "key": K["3"], "created": "2026-01-01T00:00:00+00:00",
            "artifact": {"file": "disk.qcow2", "format": "qcow2", "sha256": "f" * 64, "size": 10,
                         "virtual_size": 20, "compression": "zstd"},
            "source": {"iso": "x.iso", "sha256": "e" * 64},
            "lineage": {"iso": "e" * 64, "install": {"key": K["1"], "allocated": 4096},
                        "provision": {"key": K["7"], "allocated": 512}, "final": {"key": K["3"]}},
            "stages": {"install": {"seconds": 20.5}, "final": {"seconds": 1.0, "compression": "zstd"}},
            "inputs": {"arch": "x86_64", "firmware": "uefi"}, "tools": {}}},
    }.items():
        obj = store.object(key)
        obj.mkdir(parents=True)
        for name, data in files.items():
            (obj / name).write_text(json.dumps(data))
        (obj / "done").write_text(key)
    final = store.manifest(K["3"])
    assert (final.schema_version, final.stage, final.iso, final.firmware) == (1, "final", "e" * 64, "uefi")
    assert final.stage_keys() == {"install": K["1"], "provision": K["7"], "final": K["3"]}
    assert final.artifact is not None and final.artifact.sha256 == "f" * 64
    assert store.manifest(K["5"]).uses == {"install": K["1"]}
    assert store.manifest(K["1"]).facts == {"seconds": 20.5}
    store.set_ref("web", K["3"], {})
    assert {e.key[0]: (e.kind, e.referenced) for e in entries(store)} == {
        "1": ("install", True), "3": ("final", True), "5": ("boot", True)}


def test_a_corrupt_or_newer_manifest_is_a_clear_error(tmp_path: Path) -> None:
    obj = tmp_path / "obj"
    obj.mkdir()
    with pytest.raises(ManifestError, match="has no manifest.json"):
        manifests.read(obj)
    (obj / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="unreadable.*pim images rm"):
        manifests.read(obj)
    (obj / "manifest.json").write_text(json.dumps({"schema_version": 99, "stage": "final", "key": K["1"]}))
    with pytest.raises(ManifestError, match="upgrade PIM"):
        manifests.read(obj)


def test_written_manifests_round_trip(tmp_path: Path) -> None:
    m = _final(K["3"], K["7"], K["1"])
    manifests.write(tmp_path, m)
    assert manifests.read(tmp_path) == m
    assert json.loads((tmp_path / "manifest.json").read_text())["schema_version"] == manifests.SCHEMA_VERSION


def test_leftovers_of_dead_builds_are_cleaned(store: Store) -> None:
    dead = store.root / "tmp" / "web-dead"
    dead.mkdir()
    (dead / "owner").write_text("999999999")
    alive = store.root / "tmp" / "web-alive"
    alive.mkdir()
    (alive / "owner").write_text(str(os.getppid()))
    assert store.clean_leftovers() == [dead]
    assert alive.exists() and not dead.exists()


def test_an_object_built_on_a_replaced_object_is_stale(tmp_path: Path) -> None:
    """A provision overlay reads its boot snapshot's disk through a backing path: once
    that object is rebuilt under the same key, the overlay is no longer usable."""
    import contextlib

    from pim.engine.pipeline.finder import usable

    store = Store(tmp_path)
    _publish(store, _stage("install", K["1"]))
    _publish(store, _stage("boot", K["5"], install=K["1"]))
    boot_id = store.manifest(K["5"]).id
    m = _stage("provision", K["7"], boot=K["5"]).model_copy(update={"uses_ids": {"boot": boot_id}})
    _publish(store, m)
    with contextlib.ExitStack() as held:
        assert usable(store, K["7"], held)
    store.set_aside(K["5"])
    _publish(store, _stage("boot", K["5"], install=K["1"]))
    assert store.manifest(K["5"]).id != boot_id
    with contextlib.ExitStack() as held:
        assert not usable(store, K["7"], held)
        assert usable(store, K["5"], held)


def test_removal_never_leaves_a_half_deleted_object(store: Store) -> None:
    store.remove(K["2"])
    assert not store.object(K["2"]).exists()
    assert not [p for p in (store.root / "tmp").iterdir() if p.name.startswith("removed-")]
    # an object folder without its seal (a removal interrupted by an older release)
    # does not block a new publish of its key
    store.object(K["9"]).mkdir()
    (store.object(K["9"]) / "disk.qcow2").write_text("half")
    store.set_aside(K["9"])
    _publish(store, _stage("install", K["9"]))
    assert store.has(K["9"])


def test_a_relative_store_root_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Store(Path("cache")).root == tmp_path / "cache"
