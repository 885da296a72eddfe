"""The Proxmox target's deploy / exists / delete, as pim.engine.deploy calls them.

PVE 8.4 and later: the qcow2 is uploaded as `import` content (upload.py), or
fetched by PVE itself from `image_url` (download.py), and the VM created with its
disk `import-from` that volume. Earlier releases cannot import an uploaded disk
image through the API with a token, so PIM falls back to the node's shell
(shell.py): SFTP upload + `qm importdisk`. The version is read from /version every
time, never assumed. The template carries the tag pim-<key>: a second deploy
returns it and uploads nothing; delete removes the template and the uploaded volume.

With `nodes: [a, b, c]` each node gets its own template (a cluster without shared
storage cannot clone a template across nodes: bpg/terraform-provider-proxmox#969).
The image goes once to each storage: once in all when the upload storage is shared
(PVE's `shared` flag), else once per node. A node whose template is already there
is left as it is; delete removes the templates and uploads on every node.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pim.engine.deploy.model import BuiltImage, DeployResult
from pim.engine.deploy.proxmox.api import Pve, create_vm, delete_volume, destroy, destroy_after_failure
from pim.engine.deploy.proxmox.download import download_import
from pim.engine.deploy.proxmox.params import has_import_content, has_tag, key_tag, upload_name, uploads_in, vm_params
from pim.engine.deploy.proxmox.shell import deploy_via_shell, remove_upload
from pim.engine.deploy.proxmox.upload import upload_import
from pim.engine.deploy.spec import ProxmoxTarget
from pim.engine.errors import InputError
from pim.engine.events import Emitter


def _tagged(pve: Pve, image: BuiltImage) -> list[dict[str, Any]]:
    vms = pve.call(f"list VMs on {pve.node_name}", pve.node.qemu.get)
    return sorted((vm for vm in vms if has_tag(vm, key_tag(image.key))), key=lambda vm: int(vm["vmid"]))


def _existing(pve: Pve, image: BuiltImage, events: Emitter, clean: bool) -> dict[str, Any] | None:
    """This build's template on pve's node; half-made VMs (not templates: an interrupted
    deploy) are removed when `clean`."""
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


def _result(target_name: str, target: ProxmoxTarget, image: BuiltImage, templates: dict[str, tuple[int, str]],
            created: bool, stats: dict[str, Any]) -> DeployResult:
    """resources: vmid, node and volume of the first node's template, plus vmids and
    volumes per node ({node: vmid}, {node: volid})."""
    home = target.nodes[0]
    return DeployResult(target_name, "proxmox", image.name, image.key, created,
                        {"vmid": templates[home][0], "node": home, "volume": templates[home][1],
                         "vmids": {n: templates[n][0] for n in target.nodes},
                         "volumes": {n: templates[n][1] for n in target.nodes}}, stats)


def _found(pve: Pve, image: BuiltImage, events: Emitter, clean: bool) -> tuple[int, str] | None:
    """(vmid, upload volid) of the template on pve's node when it is whole, else None."""
    found = _existing(pve, image, events, clean=clean)
    if found and not found["config"].get("scsi0"):  # drifted: a template without its disk
        if clean:
            events.log("deploy", f"template {found['vmid']} on {pve.node_name} has lost its disk: making it again")
            destroy(pve, int(found["vmid"]))
        return None
    if not found:
        return None
    return int(found["vmid"]), (uploads_in(found["config"].get("description", "")) or [""])[0]


def shared_storage(pve: Pve, storage: str) -> bool:
    """Whether `storage` is shared by the cluster's nodes (PVE's `shared` flag, as
    GET /nodes/{node}/storage lists it): an upload there is seen by every node."""
    items = pve.call(f"storage {storage} on {pve.node_name}", lambda: pve.node.storage.get(storage=storage))
    item = next((i for i in items if i.get("storage") == storage), None)
    if item is None:
        raise InputError(f"storage {storage!r} is not available on node {pve.node_name}: "
                         "enable it there (Datacenter > Storage > Nodes) or pick another upload_storage")
    return bool(int(item.get("shared", 0)))


def deploy(target: ProxmoxTarget, image: BuiltImage, events: Emitter, target_name: str = "",
           base_dir: Path | None = None) -> DeployResult:
    """One template of the image on each of target.nodes; returns them all.

    Raises InputError when there is nothing to upload (no local build, no image_url) or
    the request needs PVE 8.4+ (several nodes, image_url) on an older release;
    DeployError (PveError) when PVE refuses a step or a task fails. A template made on
    an earlier node stays when a later one fails: the next deploy finds it.
    """
    pve = Pve(target, events, base_dir)
    templates: dict[str, tuple[int, str]] = {}
    todo: list[Pve] = []
    for node in target.nodes:
        on = pve.on(node)
        found = _found(on, image, events, clean=True)
        if found:
            events.log("deploy", f"template {found[0]} already exists on {node}: nothing uploaded")
            templates[node] = found
        else:
            todo.append(on)
    if not todo:
        return _result(target_name, target, image, templates, False, {})
    if image.path is None:  # image_url too needs the build's manifest: its size, firmware, arch
        raise InputError(f"no build of {image.name} with key {image.key[:16]} to upload")
    version = pve.version()
    release = ".".join(map(str, version))
    if not has_import_content(version) and (len(target.nodes) > 1 or target.image_url):
        raise InputError(f"PVE {release}: {'nodes' if len(target.nodes) > 1 else 'image_url'} needs PVE 8.4 or "
                         "later (import content); deploy to one node without image_url, or upgrade PVE")
    t0, sent, placed = time.monotonic(), 0, {}
    shared = has_import_content(version) and len(todo) > 1 and shared_storage(todo[0], target.upload_storage)
    for on in todo:
        if has_import_content(version):
            scope = "shared" if shared else on.node_name
            if scope not in placed:
                how = "fetched by PVE from image_url" if target.image_url else "upload as import content"
                events.log("deploy", f"PVE {release} on {on.node_name}: {how}, disk import-from")
                placed[scope] = download_import(on, image, events) if target.image_url else upload_import(
                    on, image, events)
                sent += image.size if placed[scope][1] and not target.image_url else 0
            volume = placed[scope][0]
            vmid = create_vm(on, lambda vmid: vm_params(image, target, vmid, volume, volume), events)
        else:
            volume, uploaded, vmid = deploy_via_shell(on, image, version, events, base_dir)
            sent += image.size if uploaded else 0
        try:
            on.wait(on.call(f"template {vmid}", on.node.qemu(vmid).template.post), f"convert VM {vmid} to a template")
        except BaseException:
            destroy_after_failure(on, vmid)
            raise
        events.log("deploy", f"template {vmid} on {on.node_name}")
        templates[on.node_name] = (vmid, volume)
    stats = {"uploaded": sent > 0, "bytes_sent": sent, "seconds": round(time.monotonic() - t0, 3),
             "pve_version": release, "nodes_made": [on.node_name for on in todo]}
    return _result(target_name, target, image, templates, True, stats)


def exists(target: ProxmoxTarget, image: BuiltImage, events: Emitter, target_name: str = "",
           base_dir: Path | None = None) -> DeployResult | None:
    """The templates if every node has its own with its disk, else None (drift)."""
    pve = Pve(target, events, base_dir)
    templates = {}
    for node in target.nodes:
        found = _found(pve.on(node), image, events, clean=False)
        if found is None:
            return None
        templates[node] = found
    return _result(target_name, target, image, templates, False, {})


def delete(target: ProxmoxTarget, image: BuiltImage, events: Emitter, base_dir: Path | None = None) -> list[str]:
    """Remove the template(s) of this build and the uploaded volumes on every node of the
    target. Already gone is success. Returns what was removed ("vm/<vmid>", volids;
    "<node>/<volid>" on other nodes than the first).

    Only the target's nodes are searched: another target may hold a template of the same
    build on another node of the cluster, with the same tag."""
    return delete_on(target, target.nodes, image, events, base_dir)


def delete_on(target: ProxmoxTarget, nodes: list[str], image: BuiltImage, events: Emitter,
              base_dir: Path | None = None) -> list[str]:
    """delete() on `nodes` only (nodes dropped from a target's `nodes`, say)."""
    pve = Pve(target, events, base_dir)
    removed: list[str] = []
    for node in nodes:
        on = pve.on(node)
        uploads = {f"{target.upload_storage}:import/{upload_name(image)}"} if image.sha256 else set()
        for vm in _tagged(on, image):
            config = on.call("VM config", on.node.qemu(vm["vmid"]).config.get)
            uploads.update(uploads_in(config.get("description", "")))
            if destroy(on, int(vm["vmid"])):
                removed.append(f"vm/{vm['vmid']}")
        for volume in sorted(uploads):
            if volume.startswith("ssh:"):
                if remove_upload(target, volume.removeprefix("ssh:"), events, base_dir):
                    removed.append(volume)
            elif delete_volume(on, volume):
                removed.append(volume if node == target.node else f"{node}/{volume}")
    for what in removed:
        events.log("delete", f"removed {what}")
    return removed
