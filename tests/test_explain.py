"""Why a build is (not) cached: the named input map, the reasons a stage is rebuilt,
`pim build --explain` on a store holding a recorded build (seeded: no VM)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pim.engine.config.spec import load_config
from pim.engine.pipeline.build import current_inputs, explain_image
from pim.engine.pipeline.explain import explain, reasons
from pim.engine.store.objects import Store
from tests.helpers import MINIMAL_FILES, minimal_image, write_config
from tests.pulumi.seed import seed_build

STEPS = [{"type": "shell", "script": "scripts/setup.sh"},
         {"type": "shell", "inline": "echo hi"},
         {"type": "file", "source": "motd", "destination": "/etc/motd"},
         {"type": "shell", "script": "scripts/setup.sh", "env": {"AGAIN": "1"}}]
FILES = {**MINIMAL_FILES, "scripts/setup.sh": "echo setting up\n", "motd": "hello\n"}


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, Store]:
    config = write_config(tmp_path / "proj", {"web": minimal_image(provision=STEPS)}, FILES)
    store = Store(tmp_path / "cache")
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(b"a stand-in for the artifact")
    key = seed_build(load_config(config), "web", store.root, disk, 1 << 30)
    store.set_ref("web", key, {})
    return config, store


def digests(config: Path, store: Store) -> dict[str, str]:
    return current_inputs(load_config(config), "web", store)[1]


def test_every_input_has_a_name_that_says_what_it_is(project: tuple[Path, Store]) -> None:
    config, store = project
    names = digests(config, store)
    import hashlib

    assert names["provision: scripts/setup.sh content"] == hashlib.sha256(b"echo setting up\n").hexdigest()
    assert "provision: scripts/setup.sh (step 4) content" in names  # the same script again
    # an inline script is kept as a keyed hash, however short: it may hold a secret
    assert names["provision: step 2 (inline) inline script content"].startswith("hmac-sha256:")
    assert "echo hi" not in json.dumps(names)
    assert names["provision: motd content"] == hashlib.sha256(b"hello\n").hexdigest()
    assert names["install: answer template answer.txt content"] == \
        hashlib.sha256(MINIMAL_FILES["answer.txt"].encode()).hexdigest()
    assert names["install: ISO sha256"] == hashlib.sha256(MINIMAL_FILES["installer.iso"].encode()).hexdigest()
    assert names["install: disk_size"] == str(8 << 30) and names["provision: stage version"] == "3"
    assert all(n.split(": ", 1)[0] in ("install", "provision", "final") for n in names)


@pytest.mark.parametrize("name, new, expect", [
    ("scripts/setup.sh", "echo changed\n", ["provision: scripts/setup.sh content changed",
                                            "provision: scripts/setup.sh (step 4) content changed"]),
    ("installer.iso", "another ISO", ["install: ISO sha256 changed"]),
    ("answer.txt", "hostname={{ hostname }}\n", ["install: answer template answer.txt content changed"]),
])
def test_a_changed_file_is_named(project: tuple[Path, Store], name: str, new: str, expect: list[str]) -> None:
    config, store = project
    before = digests(config, store)
    (config.parent / name).write_text(new)
    assert reasons(before, digests(config, store)) == expect


def test_settings_steps_added_and_removed(project: tuple[Path, Store]) -> None:
    config, store = project
    before = digests(config, store)
    write_config(config.parent, {"web": minimal_image(provision=STEPS, disk_size="10G")})
    assert "install: disk_size changed" in reasons(before, digests(config, store))
    assert reasons({"provision: a content": "1"}, {"provision: b content": "1"}) == [
        "provision: b content added", "provision: a content removed"]


def test_maps_under_another_salt_compare_only_what_is_not_keyed(project: tuple[Path, Store], tmp_path: Path) -> None:
    config, store = project
    cfg = load_config(config)
    mine = current_inputs(cfg, "web", store)[1]
    theirs = current_inputs(cfg, "web", Store(tmp_path / "another-machine"))[1]
    # same inputs: nothing but the note that the keyed entries could not be compared
    assert reasons(theirs, mine) == [
        "settings kept as keyed hashes were recorded under another store's salt and are not compared"]
    write_config(config.parent, {"web": minimal_image(provision=STEPS, disk_size="10G", env={"A": "1"})})
    changed = current_inputs(load_config(config), "web", store)[1]
    assert reasons(theirs, changed) == [
        "install: disk_size changed",
        "settings kept as keyed hashes were recorded under another store's salt and are not compared"]
    assert reasons(mine, changed) == ["install: disk_size changed", "provision: env changed"]


def test_explain_says_what_to_build_and_why(project: tuple[Path, Store]) -> None:
    config, store = project
    (config.parent / "scripts/setup.sh").write_text("echo changed\n")
    stages = explain_image(load_config(config), "web", store)
    by = {s.stage: s for s in stages}
    assert [s.stage for s in stages] == ["install", "provision", "final"] and not any(s.cached for s in stages)
    # the seeded store holds only the final object: install's inputs are the same, its object is gone
    assert by["install"].reasons == ["inputs as in the newest build, but its object is no longer in the store"]
    assert by["provision"].reasons[:2] == ["provision: scripts/setup.sh content changed",
                                           "provision: scripts/setup.sh (step 4) content changed"]
    assert by["final"].reasons == ["built on a new provision stage"]


def test_explain_with_nothing_to_compare_with() -> None:
    keys = {"install": "a" * 64, "provision": "b" * 64, "final": "c" * 64}
    out = explain(keys, {}, None, {"install": True, "provision": False, "final": False})
    assert [(s.stage, s.cached, s.reasons) for s in out] == [
        ("install", True, []),
        ("provision", False, ["no earlier build of this image to compare with"]),
        ("final", False, ["no earlier build of this image to compare with", "built on a new provision stage"])]
    assert out[1].line().startswith("provision  bbbbbbbbbbbb  to build: no earlier build")
    # as the build loop plans: a cached provision stage means install is not needed
    out = explain(keys, {}, None, {"install": False, "provision": True, "final": False})
    assert [(s.stage, s.cached, s.needed, s.to_build) for s in out] == [
        ("install", False, False, False), ("provision", True, True, False), ("final", False, True, True)]


def test_the_cli_explains_without_building(project: tuple[Path, Store]) -> None:
    config, store = project
    env = {**os.environ, "PIM_CACHE_DIR": str(store.root)}
    run = [sys.executable, "-m", "pim.cli.main", "build", "--explain", "-c", str(config), "web"]
    same = subprocess.run(run, capture_output=True, text=True, env=env, timeout=120)
    # the final image is cached: nothing before it is needed, though the seeded store lacks it
    assert same.returncode == 0, same.stderr
    assert "provision  " in same.stdout and "not needed (a later stage is cached)" in same.stdout
    assert any(line.strip().startswith("final") and line.endswith("cached") for line in same.stdout.splitlines())
    (config.parent / "installer.iso").write_text("another ISO")
    changed = subprocess.run([*run, "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert changed.returncode == 3, changed.stderr
    stages = {s["stage"]: s for s in json.loads(changed.stdout)["web"]}
    assert stages["install"]["reasons"] == ["install: ISO sha256 changed"]
    assert stages["provision"]["reasons"] == ["built on a new install stage"]
    assert not (store.root / "objects" / stages["final"]["key"]).exists()  # nothing was built
