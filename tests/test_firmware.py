"""UEFI firmware discovery, the per-VM copy of the variables store, and what
`pim doctor` says about both (candidates pointed at files in tmp_path)."""

from __future__ import annotations

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
    with pytest.raises(InputError, match=r"aarch64.*qemu-efi-aarch64.*firmware: bios"):
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
    assert f"ok    UEFI firmware for x86_64: {code} (vars template {vars_})" in out
    assert "--    UEFI firmware for aarch64: not found (BIOS builds still work)" in out
