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
    return stage_keys(cfg, cfg.image("img"), iso_sha, cache, "img", compression=_compression(image)).as_dict()


def _compression(image: dict) -> str:
    """What "auto" resolves to on a host with zstd; explicit values stay."""
    value = image.get("output", {}).get("compression", "auto")
    return "zstd" if value == "auto" else value


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
    ("installer.boot.command_delay", 30, set()),
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


def test_auto_compression_is_keyed_as_what_it_resolves_to(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path / "cfg", {"img": BASE}, FILES))
    (tmp_path / "cache").mkdir()
    zstd, zlib = (stage_keys(cfg, cfg.image("img"), "a" * 64, tmp_path / "cache", "img", compression=c)
                  for c in ("zstd", "zlib"))
    assert (zstd.install, zstd.provision) == (zlib.install, zlib.provision) and zstd.final != zlib.final
    explicit = load_config(write_config(tmp_path / "cfg2", {"img": _set(BASE, "output.compression", "zstd")}, FILES))
    assert stage_keys(explicit, explicit.image("img"), "a" * 64, tmp_path / "cache", "img",
                      compression="zstd").final == zstd.final


def test_the_image_name_is_the_guest_host_name_so_it_changes_everything(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path / "cfg", {"img": BASE}, FILES))
    (tmp_path / "cache").mkdir()
    web, db = (stage_keys(cfg, cfg.image("img"), "a" * 64, tmp_path / "cache", h, compression="zstd").as_dict() for h in ("web", "db"))
    assert all(web[s] != db[s] for s in ALL)


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
    inputs = install_inputs(cfg, cfg.image("img"), "a" * 64, tmp_path / "cache", "img")
    assert "hunter2-password" not in repr(inputs)


# What PIM itself puts into the guest or onto the installer's command line is content:
# editing it changes exactly the keys of the stages it shapes.
DEBIAN = {"source": {"iso": "installer.iso"}, "installer": {"family": "debian"}}


def _family_edit(monkeypatch: pytest.MonkeyPatch, field: str) -> None:
    import dataclasses

    from pim.engine.installers import families

    fam = families.FAMILIES["debian"]
    monkeypatch.setitem(families.FAMILIES, "debian", dataclasses.replace(fam, **{field: getattr(fam, field) + " x"}))


GUEST_CONTENT = [
    ("generalize script", lambda mp: mp.setattr("pim.engine.pipeline.guestfiles.GENERALIZE",
                                                "#!/bin/sh\necho changed\n"), BASE, DOWNSTREAM),
    ("step prelude", lambda mp: mp.setattr("pim.engine.pipeline.guestfiles.STEP_PRELUDE",
                                           "#!/bin/sh\nset -eu\n"), BASE, DOWNSTREAM),
    ("family boot params", lambda mp: _family_edit(mp, "boot_params"), DEBIAN, ALL),
    ("family log params", lambda mp: _family_edit(mp, "log_params"), DEBIAN, ALL),
    ("built-in template", lambda mp: mp.setattr("pim.engine.installers.families.builtin_template",
                                                lambda family, name: "changed {{ hostname }}"), DEBIAN, ALL),
]


@pytest.mark.parametrize("change,image,expected", [c[1:] for c in GUEST_CONTENT], ids=[c[0] for c in GUEST_CONTENT])
def test_content_pim_writes_changes_exactly_its_stages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        change, image: dict, expected: set) -> None:
    before = _keys(tmp_path, image, FILES)
    change(monkeypatch)
    after = _keys(tmp_path, image, FILES)
    assert {s for s in ALL if before[s] != after[s]} == expected


BOOT_MACHINE = [("cpus", 4), ("memory", "4G"), ("firmware", "uefi")]


@pytest.mark.parametrize("field,value", BOOT_MACHINE, ids=[c[0] for c in BOOT_MACHINE])
def test_the_boot_snapshot_key_follows_the_machine_it_restores_into(tmp_path: Path, field: str, value) -> None:
    from pim.engine.pipeline.keys import boot_key

    def key(image: dict, accel: str = "tcg", qemu: str = "7.2.0") -> str:
        cfg = load_config(write_config(tmp_path / "cfg", {"img": image}, FILES))
        return boot_key(cfg.image("img"), _keys(tmp_path, image, FILES)["install"], accel, qemu)

    base = key(BASE)
    assert base == key(BASE) and len(base) == 64
    assert key(_set(BASE, field, value)) != base
    assert key(BASE, accel="kvm") != base
    assert key(BASE, qemu="8.2.0") != base
    # and the image keys do not depend on it
    assert _keys(tmp_path, _set(BASE, "cpus", 4), FILES) == _keys(tmp_path, BASE, FILES)


def test_a_missing_script_is_an_input_error_naming_it(tmp_path: Path) -> None:
    from pim.engine.errors import InputError

    cfg = load_config(write_config(tmp_path / "cfg", {"img": BASE}, FILES))
    (tmp_path / "cfg" / "setup.sh").unlink()
    (tmp_path / "cache").mkdir()
    with pytest.raises(InputError, match="setup.sh"):
        stage_keys(cfg, cfg.image("img"), "a" * 64, tmp_path / "cache", "img", compression="zstd")
