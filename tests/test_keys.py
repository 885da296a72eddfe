"""Each input changes exactly the stage keys it should, and nothing else does."""

import copy
from pathlib import Path

import pytest

from pim.engine.pipeline.keys import stage_keys
from pim.engine.config.spec import load_config
from tests.helpers import write_config

FILES = {
    "installer.iso": "iso bytes",
    "answer.txt": "hostname={{ hostname }}\n",
    "extra.cfg": "extra",
    "setup.sh": "echo setup\n",
    "motd": "hello\n",
}
BASE = {
    "source": {"iso": "installer.iso"},
    "installer": {
        "template": "answer.txt",
        "files": {"extra.cfg": "extra.cfg"},
        "boot": {"kernel": "/k", "initrd": "/i", "params": "url={{ answer_url }}"},
    },
    "provision": [
        {"type": "shell", "script": "setup.sh"},
        {"type": "file", "source": "motd", "destination": "/etc/motd"},
    ],
}
ALL = {"install", "provision", "final"}
DOWNSTREAM = {"provision", "final"}


def _keys(tmp_path: Path, image: dict, files: dict[str, str], iso_sha: str = "a" * 64) -> dict[str, str]:
    cfg = load_config(write_config(tmp_path / "cfg", {"img": image}, files))
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)
    return stage_keys(cfg, cfg.image("img"), iso_sha, cache)


def _set(image: dict, dotted: str, value: object) -> dict:
    out = copy.deepcopy(image)
    node = out
    *parents, last = dotted.split(".")
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
    node[last] = value
    return out


SPEC_CHANGES = [
    ("disk_size", "16G", ALL),
    ("firmware", "uefi", ALL),
    ("installer.boot.params", "url={{ answer_url }} quiet", ALL),
    ("installer.vars", {"locale": "de_DE"}, ALL),
    ("ssh.user", "admin", ALL),
    ("ssh.password", "s3cret-pass", ALL),
    ("env", {"PROXY": "x"}, DOWNSTREAM),
    ("provision.0.env", {"A": "1"}, DOWNSTREAM),
    ("provision.1.destination", "/etc/issue", DOWNSTREAM),
    ("finalize.trim", False, DOWNSTREAM),
    ("output.compression", "zlib", {"final"}),
    ("cpus", 4, set()),
    ("memory", "4G", set()),
    ("accel", "tcg", set()),
    ("installer.timeout", "2h", set()),
    ("ssh.timeout", "1h", set()),
]


@pytest.mark.parametrize("field,value,expected", SPEC_CHANGES, ids=[c[0] for c in SPEC_CHANGES])
def test_spec_field_changes_exactly_its_stages(tmp_path: Path, field: str, value: object, expected: set) -> None:
    before = _keys(tmp_path, BASE, FILES)
    after = _keys(tmp_path, _set(BASE, field, value), FILES)
    assert {s for s in ALL if before[s] != after[s]} == expected


FILE_CHANGES = [
    ("answer.txt", ALL),
    ("extra.cfg", ALL),
    ("setup.sh", DOWNSTREAM),
    ("motd", DOWNSTREAM),
]


@pytest.mark.parametrize("name,expected", FILE_CHANGES, ids=[c[0] for c in FILE_CHANGES])
def test_file_content_changes_exactly_its_stages(tmp_path: Path, name: str, expected: set) -> None:
    before = _keys(tmp_path, BASE, FILES)
    after = _keys(tmp_path, BASE, {**FILES, name: FILES[name] + "# changed\n"})
    assert {s for s in ALL if before[s] != after[s]} == expected


def test_iso_checksum_changes_everything(tmp_path: Path) -> None:
    before = _keys(tmp_path, BASE, FILES, iso_sha="a" * 64)
    after = _keys(tmp_path, BASE, FILES, iso_sha="b" * 64)
    assert all(before[s] != after[s] for s in ALL)


def test_keys_are_stable_and_well_formed(tmp_path: Path) -> None:
    first = _keys(tmp_path, BASE, FILES)
    assert first == _keys(tmp_path, BASE, FILES)
    assert all(len(k) == 64 and int(k, 16) >= 0 for k in first.values())
    assert len(set(first.values())) == 3


def test_secret_is_not_recoverable_from_inputs(tmp_path: Path) -> None:
    from pim.engine.pipeline.keys import install_inputs

    image = _set(BASE, "ssh.password", "hunter2-password")
    cfg = load_config(write_config(tmp_path / "cfg", {"img": image}, FILES))
    (tmp_path / "cache").mkdir()
    inputs = install_inputs(cfg, cfg.image("img"), "a" * 64, tmp_path / "cache")
    assert "hunter2-password" not in repr(inputs)
