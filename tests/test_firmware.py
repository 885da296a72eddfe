"""UEFI firmware discovery, the per-VM copy of the variables store, and what
`pim doctor` says about both (candidates pointed at files in tmp_path)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pim.engine.qemu import firmware
from pim.engine.errors import InputError
from pim.engine.qemu import accel


def _files(tmp_path: Path, *names: str) -> list[Path]:
    paths = [tmp_path / n for n in names]
    for p in paths:
        p.write_bytes(f"{p.name}\n".encode())
    return paths


@pytest.fixture()
def candidates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[tuple[str, str]]]:
    table: dict[str, list[tuple[str, str]]] = {"x86_64": [], "aarch64": []}
    monkeypatch.setattr(firmware, "_CANDIDATES", table)
    monkeypatch.setattr(firmware, "search_dirs", lambda: [])  # no descriptors: the fallback list alone
    return table


def test_discover_takes_the_first_complete_pair(tmp_path: Path, candidates) -> None:
    code_only, code, vars_ = _files(tmp_path, "a_code.fd", "b_code.fd", "b_vars.fd")
    candidates["x86_64"] += [(str(code_only), str(tmp_path / "a_vars.fd")), (str(code), str(vars_))]
    assert firmware.discover() == {"x86_64": firmware.Firmware(code, vars_), "aarch64": None}


def test_each_vm_gets_its_own_vars_copy_made_once(tmp_path: Path, candidates) -> None:
    code, template = _files(tmp_path, "code.fd", "vars.fd")
    candidates["x86_64"].append((str(code), str(template)))
    first, second = tmp_path / "one" / "efivars.fd", tmp_path / "two" / "efivars.fd"
    first.parent.mkdir(), second.parent.mkdir()
    fw = firmware.for_vm("x86_64", first)
    assert fw == firmware.Firmware(code, first) and first.read_bytes() == template.read_bytes()
    first.write_bytes(b"boot entries the installer wrote")
    assert firmware.for_vm("x86_64", first).vars == first  # an existing copy is the VM's: kept
    assert first.read_bytes() == b"boot entries the installer wrote"
    firmware.for_vm("x86_64", second)
    assert second.read_bytes() == template.read_bytes() == b"vars.fd\n"  # the template is never written


def test_missing_firmware_says_what_to_install(tmp_path: Path, candidates) -> None:
    with pytest.raises(InputError, match=r"x86_64.*ovmf.*or set firmware: bios"):
        firmware.for_vm("x86_64", tmp_path / "efivars.fd")
    with pytest.raises(InputError, match=r"aarch64.*qemu-efi-aarch64\)$"):  # arm64 has no BIOS to fall back to
        firmware.for_vm("aarch64", tmp_path / "efivars.fd")
    assert not (tmp_path / "efivars.fd").exists()


def test_doctor_lists_the_firmware_found(tmp_path: Path, candidates, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from pim.cli.doctor import doctor

    code, vars_ = _files(tmp_path, "OVMF_CODE.fd", "OVMF_VARS.fd")
    candidates["x86_64"].append((str(code), str(vars_)))
    monkeypatch.setattr(accel, "choose", lambda arch, fresh=False: accel.Verdict("tcg", "stubbed", {}))
    monkeypatch.setenv("PIM_CACHE_DIR", str(tmp_path))
    doctor(fresh=False, config=tmp_path / "pim.yaml")  # no pim.yaml: no remote cache to check
    out = capsys.readouterr().out
    assert f"ok    UEFI firmware for x86_64: {code} (vars template {vars_}; from fallback paths)" in out
    assert "--    UEFI firmware for aarch64: not found (aarch64 images cannot be built here)" in out


def _descriptor(folder: Path, name: str, code: Path, vars_: Path, arch: str = "x86_64",
                machines: tuple[str, ...] = ("pc-q35-*",), features: tuple[str, ...] = (), fmt: str = "raw") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps({
        "interface-types": ["uefi"],
        "mapping": {"device": "flash", "executable": {"filename": str(code), "format": fmt},
                    "nvram-template": {"filename": str(vars_), "format": fmt}},
        "targets": [{"architecture": arch, "machines": list(machines)}],
        "features": list(features)}))
    return path


def test_descriptors_are_read_in_priority_order_with_overrides(tmp_path: Path, candidates) -> None:
    code, secure, vars_, arm_code, arm_vars = _files(tmp_path, "code.fd", "secboot.fd", "vars.fd", "aa.fd", "av.fd")
    system, admin, user = tmp_path / "usr", tmp_path / "etc", tmp_path / "home"
    _descriptor(system, "40-secure.json", secure, vars_, features=("secure-boot", "requires-smm"))  # not for PIM
    _descriptor(system, "50-i440fx-only.json", secure, vars_, machines=("pc-i440fx-*",))  # wrong machine
    _descriptor(system, "55-qcow2.json", secure, vars_, fmt="qcow2")  # PIM gives raw pflash
    _descriptor(system, "60-plain.json", code, vars_)
    _descriptor(system, "60-arm.json", arm_code, arm_vars, arch="aarch64", machines=("virt-*",))
    _descriptor(system, "70-missing.json", tmp_path / "gone.fd", vars_)
    dirs = [system, admin, user]
    found = firmware.locate("x86_64", dirs)
    assert found == firmware.Found(firmware.Firmware(code, vars_), str(system / "60-plain.json"))
    assert firmware.locate("aarch64", dirs).firmware == firmware.Firmware(arm_code, arm_vars)
    # the user's file of the same name wins; an empty file hides a name
    _descriptor(user, "60-plain.json", secure, vars_)
    assert firmware.locate("x86_64", dirs).source == str(user / "60-plain.json")
    (admin / "60-plain.json").parent.mkdir(exist_ok=True)
    (user / "60-plain.json").write_text("")
    assert firmware.locate("x86_64", dirs) is None  # hidden, and the fallback list is empty here
    candidates["x86_64"].append((str(code), str(vars_)))
    assert firmware.locate("x86_64", dirs).source == "fallback paths"


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_this_hosts_descriptors_find_ovmf_and_aavmf(arch: str) -> None:
    """ovmf and qemu-efi-aarch64 (installed by the project's setup) ship QEMU descriptors."""
    found = firmware.locate(arch)
    assert found is not None and found.source.startswith("/usr/share/qemu/firmware/")
    assert json.loads(Path(found.source).read_text())["mapping"]["executable"]["filename"] == str(found.firmware.code)
    assert "secboot" not in found.firmware.code.name


def test_the_firmware_is_decided_once_for_aarch64(tmp_path: Path) -> None:
    from pim.engine.config.spec import parse_config
    from pim.engine.errors import SpecError
    from pim.engine.pipeline.build import content_keys
    from pim.engine.store.objects import Store

    (tmp_path / "i.iso").write_bytes(b"iso")
    image = {"source": {"iso": "i.iso"}, "installer": {"family": "debian"}, "arch": "aarch64"}
    implicit = parse_config({"images": {"a": image}}, tmp_path)
    explicit = parse_config({"images": {"a": {**image, "firmware": "uefi"}}}, tmp_path)
    assert implicit.images["a"].firmware.value == "uefi"
    store = Store(tmp_path / "store")
    assert content_keys(implicit, "a", store) == content_keys(explicit, "a", store)
    with pytest.raises(SpecError, match="firmware: bios with arch: aarch64: arm64 machines boot only UEFI"):
        parse_config({"images": {"a": {**image, "firmware": "bios"}}}, tmp_path)
    x86 = parse_config({"images": {"a": {**image, "arch": "x86_64"}}}, tmp_path)
    assert x86.images["a"].firmware.value == "bios"  # x86_64 keeps BIOS as its default
