"""The pure parts of deploy, compared by value: spec, names, parameters, block plans."""

from __future__ import annotations

from pathlib import Path

import pytest

from pim.engine.deploy.aws import common as aws
from pim.engine.deploy.aws.blocks import Extent, block_runs, parse_map
from pim.engine.deploy.proxmox import params as proxmox
from pim.engine.deploy.proxmox import shell
from pim.engine.deploy.model import BuiltImage
from pim.engine.deploy.spec import AwsTarget, ProxmoxTarget, resolve_token_secret
from pim.engine.errors import InputError, SpecError
from pim.engine.config.spec import parse_config

KEY = "0123456789abcdef" * 4
IMAGE = BuiltImage("web_1", KEY, Path("/x/disk.qcow2"), "fe" * 32, 1000, 8 << 30, "x86_64", "bios",
                   {"iso": "ab" * 32, "install": {"key": "cd" * 32}, "final": {"key": KEY}}, "5b" * 32, "9a" * 32)
PVE = ProxmoxTarget(type="proxmox", api_url="https://pve.example:8006", node="pve1", storage="local-lvm",
                    token_id="pim@pve!deploy")


def test_targets_in_pim_yaml_report_every_problem_with_its_path(tmp_path: Path) -> None:
    data = {"images": {}, "targets": {
        "pve": {"type": "proxmox", "api_url": "http://pve:8006", "node": "pve", "storage": "local-lvm",
                "token_id": "root"},
        "aws": {"type": "aws", "region": "us-east-1", "copy_to": ["us-east-1"]},
        "imp": {"type": "aws", "region": "eu-west-1", "method": "import"},
        "gcp": {"type": "gcp"}}}
    with pytest.raises(SpecError) as err:
        parse_config(data, tmp_path)
    paths = {p.path: p.message for p in err.value.problems}
    assert "https://" in paths["targets.pve.api_url"]
    assert "targets.pve.token_id" in paths
    assert "home region" in paths["targets.aws"]
    assert "s3_bucket" in paths["targets.imp"]
    assert "proxmox, aws" in paths["targets.gcp"]


def test_a_valid_target_parses_and_secrets_are_not_needed_to_validate(tmp_path: Path) -> None:
    images = {"img": {"source": {"iso": "a.iso"}, "installer": {"template": "t", "boot": {"command": ["x"]}}}}
    (tmp_path / "a.iso").write_text("")
    (tmp_path / "t").write_text("")
    cfg = parse_config({"images": images, "targets": {
        "pve": {"type": "proxmox", "api_url": "https://pve:8006", "node": "pve", "storage": "local-lvm",
                "token_id": "pim@pve!deploy", "token_secret_env": "PVE_SECRET"},
        "aws": {"type": "aws", "region": "us-east-1", "copy_to": ["eu-west-1"]}}}, tmp_path)
    assert cfg.targets["pve"].type == "proxmox" and cfg.targets["aws"].regions == ["us-east-1", "eu-west-1"]


def test_the_token_secret_comes_from_env_or_file_with_a_clear_error(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIM_PROXMOX_TOKEN_SECRET", raising=False)
    with pytest.raises(InputError, match="PIM_PROXMOX_TOKEN_SECRET"):
        resolve_token_secret(PVE)
    monkeypatch.setenv("PIM_PROXMOX_TOKEN_SECRET", " s3cret \n")
    assert resolve_token_secret(PVE).get_secret_value() == "s3cret"
    target = PVE.model_copy(update={"token_secret_file": "tok"})
    with pytest.raises(InputError, match="tok.*cannot be read"):
        resolve_token_secret(target, tmp_path)
    (tmp_path / "tok").write_text("from-file\n")
    assert resolve_token_secret(target, tmp_path).get_secret_value() == "from-file"
    assert "from-file" not in repr(resolve_token_secret(target, tmp_path))


def test_pve_versions_and_the_path_they_decide() -> None:
    assert proxmox.parse_version("8.4.1") == (8, 4, 1)
    assert proxmox.parse_version("7.4-3") == (7, 4, 3)
    assert proxmox.parse_version("9.0") == (9, 0, 0)
    assert [proxmox.has_import_content(v) for v in [(7, 4, 3), (8, 3, 5), (8, 4, 0), (9, 0, 0)]] == \
        [False, False, True, True]
    assert "8.4" in shell.needs_ssh_message((8, 3, 5))


def test_the_upload_name_is_content_addressed() -> None:
    assert proxmox.upload_name(IMAGE) == f"pim-web-1-{'fe' * 12}.qcow2"
    other = BuiltImage(**{**IMAGE.__dict__, "key": "f" * 64})
    assert proxmox.upload_name(other) == proxmox.upload_name(IMAGE)  # same bytes, same name


def test_vm_parameters_bios_x86() -> None:
    params = proxmox.vm_params(IMAGE, PVE, 9000, "local:import/x.qcow2", "local:import/x.qcow2")
    desc = params.pop("description")
    assert params == {
        "vmid": 9000, "name": "pim-web-1-01234567", "tags": f"pim;pim-{KEY}", "ostype": "l26", "cores": 2,
        "memory": 2048, "scsihw": "virtio-scsi-single", "serial0": "socket", "vga": "serial0",
        "agent": "enabled=1", "net0": "virtio,bridge=vmbr0",
        "scsi0": "local-lvm:0,import-from=local:import/x.qcow2,discard=on,iothread=1,ssd=1",
        "boot": "order=scsi0", "ide2": "local-lvm:cloudinit"}
    assert proxmox.uploads_in(desc) == ["local:import/x.qcow2"] and f"key: {KEY}" in desc
    # the template says which SBOM and provenance describe it
    assert f"sbom: sha256 {'5b' * 32}" in desc.splitlines() and f"provenance: sha256 {'9a' * 32}" in desc.splitlines()


def test_vm_parameters_uefi_and_arm64() -> None:
    uefi = proxmox.vm_params(BuiltImage(**{**IMAGE.__dict__, "firmware": "uefi"}), PVE, 100, None, "ssh:/x")
    assert uefi["bios"] == "ovmf" and uefi["machine"] == "q35" and uefi["efidisk0"].startswith("local-lvm:1,")
    assert uefi["scsi1"] == "local-lvm:cloudinit" and "ide2" not in uefi  # q35 guests see SCSI, not always IDE
    assert "scsi0" not in uefi and "boot" not in uefi  # attached after qm importdisk
    arm = proxmox.vm_params(BuiltImage(**{**IMAGE.__dict__, "arch": "aarch64", "firmware": "uefi"}), PVE, 100,
                            "v", "v")
    assert arm["arch"] == "aarch64" and arm["scsi1"] == "local-lvm:cloudinit" and "ide2" not in arm
    assert "machine" not in arm


def test_tags_and_imported_volume_parsing() -> None:
    assert proxmox.has_tag({"tags": f"pim;pim-{KEY}"}, f"pim-{KEY}")
    assert not proxmox.has_tag({"tags": "pim"}, f"pim-{KEY}")
    out = "importing disk '/var/tmp/pim/x.qcow2' to VM 100 ...\nSuccessfully imported disk as 'unused0:local-lvm:vm-100-disk-0'\n"
    assert shell.imported_volume(out, {}) == "local-lvm:vm-100-disk-0"
    assert shell.imported_volume("", {"unused0": "a:1", "unused2": "b:2", "unused10": "c:3"}) == "c:3"


def test_aws_names_and_tags() -> None:
    target = AwsTarget(type="aws", region="us-east-1", tags={"team": "infra"})
    assert aws.ami_name(IMAGE) == "pim-web_1-0123456789abcdef"
    tags = aws.tags_for(IMAGE, target)
    assert tags["pim:key"] == KEY and tags["pim:image"] == "web_1" and tags["team"] == "infra"
    assert tags["pim:lineage:iso"] == "ab" * 32 and tags["pim:lineage:install"] == "cd" * 32
    assert tags["pim:sbom"] == "5b" * 32 and tags["pim:provenance"] == "9a" * 32
    untagged = BuiltImage(**{**IMAGE.__dict__, "sbom_sha256": "", "provenance_sha256": ""})
    assert not {"pim:sbom", "pim:provenance"} & set(aws.tags_for(untagged, target))
    assert all(len(v) <= 256 for v in tags.values())
    assert aws.volume_gib(8 << 30) == 8 and aws.volume_gib((8 << 30) + 1) == 9 and aws.volume_gib(1) == 1


def test_block_plan_from_the_image_map() -> None:
    entries = [{"start": 0, "length": 1 << 20, "zero": True, "data": False},
               {"start": 1 << 20, "length": 65536, "zero": False, "data": True},
               {"start": (1 << 20) + 65536, "length": 65536, "zero": False, "data": True},
               {"start": (1 << 20) + 131072, "length": 3 << 20, "zero": True, "data": True},  # allocated zeros
               {"start": 5 << 20, "length": 1 << 20, "zero": False, "data": True}]
    extents = parse_map(entries)
    assert extents == [Extent(0, 1 << 20, False), Extent(1 << 20, 131072, True),
                       Extent((1 << 20) + 131072, 3 << 20, False), Extent(5 << 20, 1 << 20, True)]
    block = 512 * 1024
    assert list(block_runs(extents, block)) == [(2, 3), (10, 12)]
    assert list(block_runs([Extent(100, 10, True), Extent(block - 1, 2, True)], block)) == [(0, 2)]
