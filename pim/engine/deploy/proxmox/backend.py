"""The Proxmox target's deploy / exists / delete, as pim.engine.deploy calls them.

PVE 8.4 and later: the qcow2 is uploaded as `import` content (upload.py) and the
VM created with its disk `import-from` that volume. Earlier releases cannot import
an uploaded disk image through the API with a token, so PIM falls back to the
node's shell (shell.py): SFTP upload + `qm importdisk`. The version is read from
/version every time, never assumed. The template carries the tag pim-<key>: a
second deploy returns it and uploads nothing; delete removes the template and the
uploaded volume.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pim.engine.deploy.model import BuiltImage, DeployResult
from pim.engine.deploy.proxmox.api import Pve, create_vm, delete_volume, destroy
from pim.engine.deploy.proxmox.params import has_import_content, has_tag, key_tag, upload_name, uploads_in, vm_params
from pim.engine.deploy.proxmox.shell import deploy_via_shell, remove_upload
from pim.engine.deploy.proxmox.upload import upload_import
from pim.engine.deploy.spec import ProxmoxTarget
from pim.engine.errors import InputError
from pim.engine.events import Emitter


def _tagged(pve: Pve, image: BuiltImage) -> list[dict[str, Any]]:
    vms = pve.call("list VMs", pve.node.qemu.get)
    return sorted((vm for vm in vms if has_tag(vm, key_tag(image.key))), key=lambda vm: int(vm["vmid"]))


def _existing(pve: Pve, image: BuiltImage, events: Emitter, clean: bool) -> dict[str, Any] | None:
    """This build's template; half-made VMs (not templates: an interrupted deploy) are removed."""
    found = None
    for vm in _tagged(pve, image):
        if int(vm.get("template", 0)) == 1 and found is None:
            found = vm
        elif clean:
            events.log("deploy", f"removing half-made VM {vm['vmid']} of an interrupted deploy")
            destroy(pve, int(vm["vmid"]))
    if found is None:
        return None
    config = pve.call("VM config", pve.node.qemu(found["vmid"]).config.get)
    return {**found, "config": config}


def _result(target_name: str, target: ProxmoxTarget, image: BuiltImage, vmid: int, volume: str, created: bool,
            stats: dict[str, Any]) -> DeployResult:
    return DeployResult(target_name, "proxmox", image.name, image.key, created,
                        {"vmid": vmid, "node": target.node, "volume": volume}, stats)


def deploy(target: ProxmoxTarget, image: BuiltImage, events: Emitter, target_name: str = "",
           base_dir: Path | None = None) -> DeployResult:
    pve = Pve(target, events, base_dir)
    found = _existing(pve, image, events, clean=True)
    if found and not found["config"].get("scsi0"):  # drifted: a template without its disk
        events.log("deploy", f"template {found['vmid']} has lost its disk: making it again")
        destroy(pve, int(found["vmid"]))
        found = None
    if found:
        volume = (uploads_in(found["config"].get("description", "")) or [""])[0]
        events.log("deploy", f"template {found['vmid']} already exists: nothing uploaded")
        return _result(target_name, target, image, int(found["vmid"]), volume, False, {})
    if image.path is None:
        raise InputError(f"no build of {image.name} with key {image.key[:16]} to upload")
    version = pve.version()
    t0 = time.monotonic()
    if has_import_content(version):
        events.log("deploy", f"PVE {'.'.join(map(str, version))}: upload as import content, disk import-from")
        volume, uploaded = upload_import(pve, image, events)
        vmid = create_vm(pve, lambda vmid: vm_params(image, target, vmid, volume, volume), events)
    else:
        volume, uploaded, vmid = deploy_via_shell(pve, image, version, events, base_dir)
    try:
        pve.wait(pve.call(f"template {vmid}", pve.node.qemu(vmid).template.post), f"convert VM {vmid} to a template")
    except BaseException:
        destroy(pve, vmid)
        raise
    stats = {"uploaded": uploaded, "bytes_sent": image.size if uploaded else 0,
             "seconds": round(time.monotonic() - t0, 3), "pve_version": ".".join(map(str, version))}
    events.log("deploy", f"template {vmid} on {target.node}")
    return _result(target_name, target, image, vmid, volume, True, stats)


def exists(target: ProxmoxTarget, image: BuiltImage, events: Emitter, target_name: str = "",
           base_dir: Path | None = None) -> DeployResult | None:
    """The template if it is there with its disk, else None (drift)."""
    found = _existing(Pve(target, events, base_dir), image, events, clean=False)
    if not found or not found["config"].get("scsi0"):
        return None
    volume = (uploads_in(found["config"].get("description", "")) or [""])[0]
    return _result(target_name, target, image, int(found["vmid"]), volume, False, {})


def delete(target: ProxmoxTarget, image: BuiltImage, events: Emitter, base_dir: Path | None = None) -> list[str]:
    """Remove the template(s) of this build and the uploaded volume. Already gone is success."""
    pve = Pve(target, events, base_dir)
    removed: list[str] = []
    uploads = {f"{target.upload_storage}:import/{upload_name(image)}"} if image.sha256 else set()
    for vm in _tagged(pve, image):
        config = pve.call("VM config", pve.node.qemu(vm["vmid"]).config.get)
        uploads.update(uploads_in(config.get("description", "")))
        if destroy(pve, int(vm["vmid"])):
            removed.append(f"vm/{vm['vmid']}")
    for volume in sorted(uploads):
        if volume.startswith("ssh:"):
            if remove_upload(target, volume.removeprefix("ssh:"), events, base_dir):
                removed.append(volume)
        elif delete_volume(pve, volume):
            removed.append(volume)
    for what in removed:
        events.log("delete", f"removed {what}")
    return removed
