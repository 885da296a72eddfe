"""Proxmox deploys against a TLS fake of the PVE API on 127.0.0.1 (pve_fake.py: why a fake
of our own, and the PVE facts it relies on). Every request is checked against PVE's
published API schema; the fallback for PVE before 8.4 runs over real SSH/SFTP."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from pim.engine.deploy.proxmox import backend as proxmox
from pim.engine.deploy.proxmox.params import upload_name
from pim.engine.deploy.model import BuiltImage, DeployError
from pim.engine.errors import InputError
from tests.deploy.conftest import Disk, Recorder, pve_target


def tagged(fake: Any, key: str) -> dict[int, dict[str, Any]]:
    return {vmid: cfg for vmid, cfg in fake.vms.items() if f"pim-{key}" in str(cfg.get("tags", ""))}


def test_pve_84_uploads_import_content_and_makes_a_template(pve: Any, pve_env: str, pve_cert: tuple, disk: Disk,
                                                            events: Recorder) -> None:
    result = proxmox.deploy(pve_target(pve, pve_cert[0]), disk.image, events.emitter, "pve")
    assert result.created and result.resources["vmid"] == 100 and result.resources["node"] == "pve"
    volid = f"local:import/{upload_name(disk.image)}"
    assert result.resources["volume"] == volid
    uploaded = Path(pve.files[volid]["path"])
    assert hashlib.sha256(uploaded.read_bytes()).hexdigest() == disk.image.sha256
    config = pve.vms[100]
    assert config["template"] == 1
    assert config["scsi0"].startswith("local-lvm:vm-100-disk-0,")
    assert config["scsihw"] == "virtio-scsi-single"
    assert config["ide2"] == "local-lvm:cloudinit"
    assert config["serial0"] == "socket" and config["agent"] == "enabled=1"
    assert f"pim-{disk.image.key}" in config["tags"].split(";")
    assert f"provenance: sha256 {'9a' * 32}" in config["description"].splitlines()
    assert pve.schema_errors == []
    assert pve_env not in events.text()


def test_redeploy_returns_the_same_template_and_uploads_nothing(pve: Any, pve_env: str, pve_cert: tuple,
                                                                disk: Disk, events: Recorder) -> None:
    target = pve_target(pve, pve_cert[0])
    first = proxmox.deploy(target, disk.image, events.emitter)
    again = proxmox.deploy(target, disk.image, events.emitter)
    assert again.created is False and again.resources == first.resources
    assert pve.count("POST", r"/upload$") == 1 and pve.count("POST", r"/qemu$") == 1


def test_an_upload_already_on_the_storage_is_not_sent_again(pve: Any, pve_env: str, pve_cert: tuple,
                                                            disk: Disk, events: Recorder) -> None:
    target = pve_target(pve, pve_cert[0])
    proxmox.deploy(target, disk.image, events.emitter)
    pve.vms.clear()  # the template was removed by hand; the upload is still there
    result = proxmox.deploy(target, disk.image, events.emitter)
    assert result.created and pve.count("POST", r"/upload$") == 1
    assert result.stats["uploaded"] is False and result.stats["bytes_sent"] == 0


def test_delete_removes_the_template_and_the_upload(pve: Any, pve_env: str, pve_cert: tuple, disk: Disk,
                                                    events: Recorder) -> None:
    target = pve_target(pve, pve_cert[0])
    result = proxmox.deploy(target, disk.image, events.emitter)
    removed = proxmox.delete(target, BuiltImage.by_key("demo", disk.image.key), events.emitter)
    assert removed == [f"vm/{result.resources['vmid']}", result.resources["volume"]]
    assert tagged(pve, disk.image.key) == {} and pve.files == {} and pve.disks == {}
    assert proxmox.delete(target, disk.image, events.emitter) == []  # already gone is success
    assert pve.schema_errors == []


def test_exists_sees_the_template_and_drift(pve: Any, pve_env: str, pve_cert: tuple, disk: Disk,
                                            events: Recorder) -> None:
    target = pve_target(pve, pve_cert[0])
    assert proxmox.exists(target, disk.image, events.emitter) is None
    result = proxmox.deploy(target, disk.image, events.emitter)
    assert proxmox.exists(target, disk.image, events.emitter).resources == result.resources
    del pve.vms[result.resources["vmid"]]["scsi0"]
    assert proxmox.exists(target, disk.image, events.emitter) is None
    repaired = proxmox.deploy(target, disk.image, events.emitter)
    assert repaired.created and proxmox.exists(target, disk.image, events.emitter).resources == repaired.resources
    assert len(tagged(pve, disk.image.key)) == 1 and pve.count("POST", r"/upload$") == 1


@pytest.mark.parametrize("version", ["8.3.5", "7.4-3"])
def test_before_84_the_node_shell_imports_the_disk(version: str, pve: Any, pve_env: str, pve_cert: tuple,
                                                   disk: Disk, events: Recorder, tmp_path: Path) -> None:
    from tests.deploy.ssh_fake import FakeNodeShell

    pve.version = version
    (tmp_path / "keys").mkdir()
    node = FakeNodeShell(tmp_path / "node", pve, tmp_path / "keys")
    try:
        ssh = {"host": "127.0.0.1", "port": node.port, "key_file": str(node.key_file),
               "known_hosts": str(node.known_hosts)}
        target = pve_target(pve, pve_cert[0], ssh=ssh)
        result = proxmox.deploy(target, disk.image, events.emitter)
        path = f"/var/tmp/pim/{upload_name(disk.image)}"
        assert result.resources["volume"] == f"ssh:{path}"
        assert pve.count("POST", r"/upload$") == 0  # nothing went through the API upload
        on_node = tmp_path / "node" / path.lstrip("/")
        assert hashlib.sha256(on_node.read_bytes()).hexdigest() == disk.image.sha256
        config = pve.vms[result.resources["vmid"]]
        assert config["template"] == 1 and config["scsi0"].startswith("local-lvm:vm-100-disk-0,")
        assert not [k for k in config if k.startswith("unused")]
        assert any(c.startswith("qm importdisk 100 ") for c in node.commands)
        again = proxmox.deploy(target, disk.image, events.emitter)
        assert again.created is False and again.resources == result.resources
        proxmox.delete(target, disk.image, events.emitter)
        assert not on_node.exists() and tagged(pve, disk.image.key) == {}
        assert pve.schema_errors == []
    finally:
        node.stop()


def test_before_84_without_ssh_settings_is_a_clear_error(pve: Any, pve_env: str, pve_cert: tuple, disk: Disk,
                                                         events: Recorder) -> None:
    pve.version = "8.3.5"
    with pytest.raises(InputError, match=r"PVE 8\.3\.5 .*8\.4.*'ssh'"):
        proxmox.deploy(pve_target(pve, pve_cert[0]), disk.image, events.emitter)
    assert pve.vms == {} and pve.count("POST", r"/upload$") == 0


@pytest.mark.parametrize("kind,message", [("qmtemplate", "storage 'local-lvm' is full"),
                                          ("qmcreate", "unable to create VM: lvcreate failed")])
def test_a_failed_task_is_surfaced_and_leaves_no_half_made_vm(kind: str, message: str, pve: Any, pve_env: str,
                                                              pve_cert: tuple, disk: Disk, events: Recorder) -> None:
    pve.fail_tasks[kind] = message
    with pytest.raises(DeployError) as err:
        proxmox.deploy(pve_target(pve, pve_cert[0]), disk.image, events.emitter)
    assert message in str(err.value) and f"TASK ERROR: {message}" in str(err.value)  # the log tail
    assert tagged(pve, disk.image.key) == {} and pve.disks == {}


def test_a_checksum_mismatch_fails_the_upload(pve: Any, pve_env: str, pve_cert: tuple, disk: Disk,
                                              events: Recorder) -> None:
    wrong = BuiltImage(**{**disk.image.__dict__, "sha256": "0" * 64})
    with pytest.raises(DeployError, match="checksum mismatch"):
        proxmox.deploy(pve_target(pve, pve_cert[0]), wrong, events.emitter)
    assert pve.files == {} and pve.vms == {}


def test_a_task_past_its_deadline_is_an_error(pve: Any, pve_env: str, pve_cert: tuple, disk: Disk,
                                              events: Recorder) -> None:
    pve.task_polls = 10 ** 9
    with pytest.raises(DeployError, match="did not finish within"):
        proxmox.deploy(pve_target(pve, pve_cert[0], task_timeout=0.5), disk.image, events.emitter)


def test_a_vmid_taken_meanwhile_is_retried(pve: Any, pve_env: str, pve_cert: tuple, disk: Disk,
                                           events: Recorder) -> None:
    pve.steal_vmids = 2
    result = proxmox.deploy(pve_target(pve, pve_cert[0]), disk.image, events.emitter)
    assert result.resources["vmid"] == 102
    assert "VMID 100 was taken" in events.text() and "VMID 101 was taken" in events.text()


def test_vmid_min_picks_the_first_free_id_from_there(pve: Any, pve_env: str, pve_cert: tuple, disk: Disk,
                                                     events: Recorder) -> None:
    pve.vms[9000] = {"name": "other"}
    result = proxmox.deploy(pve_target(pve, pve_cert[0], vmid_min=9000), disk.image, events.emitter)
    assert result.resources["vmid"] == 9001


def test_tls_is_verified_by_default(pve: Any, pve_env: str, disk: Disk, events: Recorder) -> None:
    with pytest.raises(DeployError, match="TLS verification.*ca_file"):
        proxmox.deploy(pve_target(pve, None), disk.image, events.emitter)


def test_a_wrong_secret_names_the_token_not_the_secret(pve: Any, pve_cert: tuple, disk: Disk, events: Recorder,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIM_PROXMOX_TOKEN_SECRET", "not-the-right-secret")
    with pytest.raises(DeployError, match="refused token pim@pve!deploy") as err:
        proxmox.deploy(pve_target(pve, pve_cert[0]), disk.image, events.emitter)
    assert "not-the-right-secret" not in str(err.value)


def test_a_missing_secret_names_the_variable_and_the_file(pve: Any, pve_cert: tuple, disk: Disk, events: Recorder,
                                                          monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PIM_PROXMOX_TOKEN_SECRET", raising=False)
    with pytest.raises(InputError, match="PIM_PROXMOX_TOKEN_SECRET"):
        proxmox.deploy(pve_target(pve, pve_cert[0]), disk.image, events.emitter)
    with pytest.raises(InputError, match="MY_PVE_SECRET"):
        proxmox.deploy(pve_target(pve, pve_cert[0], token_secret_env="MY_PVE_SECRET"), disk.image, events.emitter)
    with pytest.raises(InputError, match="nope.txt"):
        proxmox.deploy(pve_target(pve, pve_cert[0], token_secret_file="nope.txt"), disk.image, events.emitter,
                       base_dir=tmp_path)
    from tests.deploy.pve_fake import TOKEN_SECRET

    (tmp_path / "secret.txt").write_text(TOKEN_SECRET + "\n")
    result = proxmox.deploy(pve_target(pve, pve_cert[0], token_secret_file="secret.txt"), disk.image,
                            events.emitter, base_dir=tmp_path)
    assert result.created


def test_an_aarch64_build_becomes_an_aarch64_uefi_template(pve: Any, pve_env: str, pve_cert: tuple, disk: Disk,
                                                          events: Recorder) -> None:
    image = BuiltImage(**{**disk.image.__dict__, "arch": "aarch64", "firmware": "uefi",
                          "key": hashlib.sha256(b"aarch64-template").hexdigest()})
    result = proxmox.deploy(pve_target(pve, pve_cert[0]), image, events.emitter, "pve")
    config = pve.vms[result.resources["vmid"]]
    assert config["arch"] == "aarch64" and config["bios"] == "ovmf" and config["template"] == 1
    assert config["efidisk0"].startswith("local-lvm:") and "efitype=4m" in config["efidisk0"]
    assert config["scsi1"] == "local-lvm:cloudinit" and "ide2" not in config  # no IDE bus on aarch64
    assert "machine" not in config  # q35 is x86 only; PVE picks virt for aarch64
    assert pve.schema_errors == []
