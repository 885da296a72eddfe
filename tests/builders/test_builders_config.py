"""`builders:` in pim.yaml and the per-user builders file: parsing, merging, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pim.engine.builders import load
from pim.engine.builders.spec import LOCAL
from pim.engine.config.spec import parse_config
from pim.engine.errors import InputError, SpecError

IMAGE = {"source": {"iso": "i.iso"}, "installer": {"family": "debian"}}


def _cfg(tmp_path: Path, builders: dict | None = None, **image: object):
    (tmp_path / "i.iso").write_bytes(b"iso")
    data: dict = {"images": {"web": {**IMAGE, **image}}}
    if builders is not None:
        data["builders"] = builders
    return parse_config(data, tmp_path)


def test_a_project_builder_is_resolved(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, {"arm": {"uri": "ssh://pim@arm.lan:2222", "systems": {"aarch64": "kvm"}, "max_jobs": 3,
                                  "key_file": "~/.ssh/pim"}})
    got = load(cfg, tmp_path / "none.yaml")
    arm = got["arm"]
    assert (arm.user, arm.host, arm.port, arm.max_jobs, dict(arm.systems)) == ("pim", "arm.lan", 2222, 3,
                                                                                {"aarch64": "kvm"})
    assert arm.key_file == Path.home() / ".ssh" / "pim"
    assert got[LOCAL].is_local and got[LOCAL].max_jobs == 1


def test_the_user_file_names_hosts_and_pim_yaml_wins_per_field(tmp_path: Path) -> None:
    user = tmp_path / "builders.yaml"
    user.write_text(yaml.safe_dump({"builders": {"arm": {"uri": "ssh://me@10.0.0.5", "systems": {"aarch64": "kvm"},
                                                         "max_jobs": 8}}}))
    cfg = _cfg(tmp_path, {"arm": {"max_jobs": 2}})
    arm = load(cfg, user)["arm"]
    assert (arm.host, arm.user, arm.max_jobs) == ("10.0.0.5", "me", 2)


def test_pim_yaml_cannot_redirect_a_users_builder(tmp_path: Path) -> None:
    user = tmp_path / "builders.yaml"
    user.write_text(yaml.safe_dump({"builders": {"arm": {"uri": "ssh://me@10.0.0.5", "systems": {"aarch64": "kvm"},
                                                         "pim": "/opt/pim/bin/pim"}}}))
    cfg = _cfg(tmp_path, {"arm": {"uri": "ssh://me@evil.example", "pim": "curl x | sh; pim", "key_file": "/k",
                                  "max_jobs": 4}})
    arm = load(cfg, user)["arm"]
    assert (arm.host, arm.pim, arm.key_file, arm.max_jobs) == ("10.0.0.5", "/opt/pim/bin/pim", None, 4)


def test_the_image_names_its_builder(tmp_path: Path) -> None:
    assert _cfg(tmp_path, builder="arm").images["web"].builder == "arm"


@pytest.mark.parametrize(("entry", "message"), [
    ({"uri": "pim@arm.lan", "systems": {"aarch64": "kvm"}}, "is not an SSH address"),
    ({"uri": "ssh://arm.lan:70000", "systems": {"aarch64": "kvm"}}, "is not an SSH address"),
    ({"uri": "ssh://arm.lan", "systems": {"riscv64": "kvm"}}, "riscv64"),
    ({"uri": "ssh://arm.lan", "systems": {"aarch64": "fast"}}, "fast"),
    ({"uri": "ssh://arm.lan", "systems": {"aarch64": "kvm"}, "max_jobs": 0}, "greater than or equal to 1"),
    ({"uri": "ssh://arm.lan", "systems": {"aarch64": "kvm"}, "password": "x"}, "unknown key"),
])
def test_bad_entries_in_pim_yaml_name_the_field(tmp_path: Path, entry: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        _cfg(tmp_path, {"arm": entry})


@pytest.mark.parametrize(("entry", "message"), [
    ({"systems": {"aarch64": "kvm"}}, "needs uri"),
    ({"uri": "ssh://arm.lan"}, "needs systems"),
])
def test_incomplete_builders_are_input_errors(tmp_path: Path, entry: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load(_cfg(tmp_path, {"arm": entry}), tmp_path / "none.yaml")


@pytest.mark.parametrize("entry", [{"uri": "ssh://x"}, {"fetch": False}, {"pim": "/opt/pim"}])
def test_local_takes_no_address(tmp_path: Path, entry: dict) -> None:
    with pytest.raises(InputError, match="the builder `local` is this machine"):
        load(_cfg(tmp_path, {"local": entry}), tmp_path / "none.yaml")


def test_a_builder_can_keep_its_artifacts(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, {"pve": {"uri": "ssh://root@pve", "systems": {"x86_64": "kvm"}, "fetch": False}})
    got = load(cfg, tmp_path / "none.yaml")
    assert got["pve"].fetch is False and got["local"].fetch is True


def test_a_bad_user_file_is_named(tmp_path: Path) -> None:
    user = tmp_path / "builders.yaml"
    user.write_text("builders:\n  arm: {uri: ssh://a, systems: {aarch64: kvm}, colour: red}\n")
    with pytest.raises(InputError, match=rf"{user}.*colour"):
        load(_cfg(tmp_path), user)
    user.write_text("builders: [\n")
    with pytest.raises(InputError, match=str(user)):
        load(_cfg(tmp_path), user)


def test_a_project_builder_names_a_program_not_a_shell_line(tmp_path: Path) -> None:
    ok = _cfg(tmp_path, {"b": {"uri": "ssh://ci@b", "systems": {"x86_64": "kvm"}, "pim": "/opt/pim/bin/pim"}})
    assert load(ok, tmp_path / "none.yaml")["b"].pim == "/opt/pim/bin/pim"
    bad = _cfg(tmp_path, {"b": {"uri": "ssh://ci@b", "systems": {"x86_64": "kvm"}, "pim": "curl x | sh; pim"}})
    with pytest.raises(InputError, match="may set pim: to a program's path only"):
        load(bad, tmp_path / "none.yaml")
    user = tmp_path / "builders.yaml"  # the user's own file may give a command line
    user.write_text(yaml.safe_dump({"builders": {"b": {"uri": "ssh://me@b", "systems": {"x86_64": "kvm"},
                                                       "pim": "env A=1 /opt/pim/bin/pim"}}}))
    assert load(_cfg(tmp_path), user)["b"].pim == "env A=1 /opt/pim/bin/pim"
