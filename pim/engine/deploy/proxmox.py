"""Proxmox VE: a built image as a VM template, through the API with a token.

PVE 8.4 and later: the qcow2 is uploaded (streamed, constant memory) to a file
storage as `import` content under a content-addressed name, then the VM is
created with its disk `import-from` that volume. Earlier releases cannot import
an uploaded disk image through the API with a token, so PIM falls back to the
node's shell (proxmox_ssh.py): SFTP upload + `qm importdisk`. The version is
read from /version every time, never assumed.

Every task is polled to its end with a deadline; a failed task's log tail is in
the error. The template carries the tag pim-<key>: a second deploy returns it and
uploads nothing; delete removes the template and the uploaded volume.
"""

from __future__ import annotations

import io
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import quote, urlparse

from pim.engine.deploy.model import BuiltImage, DeployError, DeployResult
from pim.engine.deploy.spec import ProxmoxTarget, resolve_token_secret
from pim.engine.errors import InputError
from pim.engine.events import Emitter

IMPORT_CONTENT_SINCE = (8, 4)  # first release taking .qcow2 uploads as `import` content
VMID_TRIES = 5


# ---------------------------------------------------------------- pure parts

def parse_version(text: str) -> tuple[int, int, int]:
    """'8.4.1' or '7.4-3' (what /version answers) as (8, 4, 1)."""
    m = re.match(r"^(\d+)\.(\d+)(?:[.-](\d+))?", text or "")
    if not m:
        raise DeployError(f"cannot read the PVE version {text!r}")
    return int(m[1]), int(m[2]), int(m[3] or 0)


def has_import_content(version: tuple[int, int, int]) -> bool:
    return version[:2] >= IMPORT_CONTENT_SINCE


def upload_name(image: BuiltImage) -> str:
    """Content-addressed: the same bytes always get the same name, so a second upload is skipped."""
    return f"pim-{_dns(image.name)}-{image.sha256[:24]}.qcow2"


def key_tag(key: str) -> str:
    return f"pim-{key}"


def _dns(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9-]+", "-", text).strip("-") or "image"


def vm_name(image: BuiltImage) -> str:
    return f"pim-{_dns(image.name)}-{image.key[:8]}"


def description(image: BuiltImage, upload: str) -> str:
    lines = [f"PIM image {image.name}", f"key: {image.key}", f"sha256: {image.sha256}", f"upload: {upload}"]
    lines += [f"lineage.{stage}: {value}" for stage, value in image.lineage_tags.items()]
    return "\n".join(lines)


def uploads_in(text: str) -> list[str]:
    """The upload recorded in a template's description (see description())."""
    return re.findall(r"^upload: (\S+)$", text or "", re.M)


def disk_options(target: ProxmoxTarget) -> str:
    return "discard=on,iothread=1,ssd=1"


def vm_params(image: BuiltImage, target: ProxmoxTarget, vmid: int, import_from: str | None, upload: str) -> dict[str, Any]:
    """POST /nodes/{node}/qemu parameters. import_from None: the disk is attached later (fallback)."""
    uefi = image.firmware == "uefi" or image.arch == "aarch64"
    params: dict[str, Any] = {
        "vmid": vmid,
        "name": vm_name(image),
        "description": description(image, upload),
        "tags": f"pim;{key_tag(image.key)}",
        "ostype": "l26",
        "cores": target.cores,
        "memory": target.memory_mb,
        "scsihw": "virtio-scsi-single",
        "serial0": "socket",
        "vga": "serial0",
        "agent": "enabled=1",
        "net0": f"virtio,bridge={target.bridge}",
    }
    if import_from is not None:
        params["scsi0"] = f"{target.storage}:0,import-from={import_from},{disk_options(target)}"
        params["boot"] = "order=scsi0"
    # aarch64 guests have no IDE bus; x86 keeps the usual ide2 for the cloud-init drive.
    params["scsi1" if image.arch == "aarch64" else "ide2"] = f"{target.storage}:cloudinit"
    if image.arch == "aarch64":
        params["arch"] = "aarch64"
    if uefi:
        params["bios"] = "ovmf"
        params["efidisk0"] = f"{target.storage}:1,efitype=4m,pre-enrolled-keys=0"
        if image.arch == "x86_64":
            params["machine"] = "q35"
    return params


def has_tag(vm: dict[str, Any], tag: str) -> bool:
    return tag in re.split(r"[;, ]+", str(vm.get("tags", "")))


# ---------------------------------------------------------------- API client

@dataclass
class Task:
    upid: str
    node: str


class Pve:
    """proxmoxer with token auth; every call's failure becomes a DeployError without secrets."""

    def __init__(self, target: ProxmoxTarget, events: Emitter, base_dir: Path | None = None):
        from proxmoxer import ProxmoxAPI

        secret = resolve_token_secret(target, base_dir).get_secret_value()
        events.add_secret(secret)
        user, token = target.token_id.split("!", 1)
        verify: bool | str = target.verify_tls
        if target.ca_file:
            verify = str((base_dir or Path(".")) / target.ca_file)
        self.target, self.events = target, events
        self.host = urlparse(target.api_url).netloc
        self.api = ProxmoxAPI(self.host, user=user, token_name=token, token_value=secret, verify_ssl=verify,
                              timeout=target.timeout, service="PVE")
        self.node = self.api.nodes(target.node)

    def call(self, what: str, fn: Callable[[], Any]) -> Any:
        import requests
        from proxmoxer import ResourceException

        try:
            return fn()
        except ResourceException as e:
            if e.status_code == 401:
                raise DeployError(f"{what}: the PVE API refused token {self.target.token_id} (401): "
                                  "check the token id and its secret") from None
            raise PveError(what, e.status_code, str(e.content), e.errors) from None
        except requests.exceptions.SSLError as e:
            if "certificate" in str(e).lower():  # not a dropped connection (also an SSLError mid-stream)
                raise DeployError(f"{what}: TLS verification of {self.host} failed: the certificate is not "
                                  "trusted; set ca_file to the CA that signed it") from None
            raise PveConnectionError(f"{what}: TLS connection to {self.host} broke: {e}") from None
        except requests.exceptions.RequestException as e:
            raise PveConnectionError(f"{what}: no answer from {self.host}: {e.__class__.__name__}: {e}") from None

    def version(self) -> tuple[int, int, int]:
        return parse_version(str(self.call("GET /version", self.api.version.get).get("version", "")))

    def wait(self, upid: str | None, what: str) -> None:
        """Poll a task to its end; raise with its log tail if it failed or ran past the deadline."""
        if not upid:  # some calls of older releases finish at once and return null
            return
        node = upid.split(":")[1] if upid.startswith("UPID:") else self.target.node
        tasks = self.api.nodes(node).tasks(quote(upid, safe=":@!"))  # one URL segment, whatever it holds
        deadline = time.monotonic() + self.target.task_timeout
        delay = 0.1
        while True:
            status = self.call(f"task status of {what}", tasks.status.get)
            if status.get("status") == "stopped":
                exit_status = str(status.get("exitstatus", ""))
                if exit_status == "OK" or exit_status.startswith("WARNINGS"):
                    return
                raise DeployError(f"{what} failed: {exit_status or 'no exit status'}", self._log_tail(tasks))
            if time.monotonic() > deadline:
                raise DeployError(f"{what} did not finish within {self.target.task_timeout:.0f} s (task {upid})",
                                  self._log_tail(tasks))
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)

    def _log_tail(self, tasks: Any) -> list[str]:
        try:
            lines = self.call("task log", lambda: tasks.log.get(limit=1000))
        except DeployError:
            return []
        return [str(line.get("t", "")) for line in lines][-20:]


class PveError(DeployError):
    def __init__(self, what: str, status: int, reason: str, errors: Any = None):
        self.status, self.reason = status, reason
        detail = f" {errors}" if errors else ""
        super().__init__(f"{what}: PVE answered {status} {reason}{detail}")


class PveConnectionError(DeployError):
    """The connection failed or dropped: worth a retry, unlike an answer from PVE."""


# ---------------------------------------------------------------- steps

class _ProgressFile(io.FileIO):
    """The upload's file: reports progress as the multipart encoder reads it, chunk by chunk."""

    def __init__(self, path: Path, report: Callable[[int], None]):
        super().__init__(str(path), "rb")  # a str name: requests sends it as the part's filename, which PVE needs
        self.report, self.done = report, 0

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        data = super().read(size)
        self.done += len(data or b"")
        self.report(self.done)
        return data  # type: ignore[return-value]


def _volume_path(volid: str) -> str:
    # One URL segment: PVE volume ids contain '/', as in local:import/x.qcow2.
    return quote(volid, safe=":")


def _find_volume(pve: Pve, storage: str, volid: str) -> dict[str, Any] | None:
    items = pve.call(f"list {storage}", lambda: pve.node.storage(storage).content.get(content="import"))
    return next((i for i in items if i.get("volid") == volid), None)


def delete_volume(pve: Pve, volid: str) -> bool:
    storage = volid.split(":", 1)[0]
    try:
        upid = pve.call(f"delete {volid}", lambda: pve.node.storage(storage).content(_volume_path(volid)).delete())
    except PveError as e:
        if e.status == 404 or "does not exist" in e.reason or "not found" in e.reason.lower():
            return False
        raise
    pve.wait(upid, f"delete {volid}")
    return True


def upload_import(pve: Pve, image: BuiltImage, events: Emitter) -> tuple[str, bool]:
    """The qcow2 as `import` content under its content-addressed name; (volid, uploaded)."""
    target = pve.target
    name = upload_name(image)
    volid = f"{target.upload_storage}:import/{name}"
    existing = _find_volume(pve, target.upload_storage, volid)
    if existing and int(existing.get("size", -1)) == image.size:
        events.log("upload", f"{volid} is already on the storage: nothing uploaded")
        return volid, False
    if existing:  # a different size under a content address: a broken copy
        delete_volume(pve, volid)
    assert image.path is not None
    storage = pve.node.storage(target.upload_storage)
    last = [0.0]

    def report(done: int) -> None:
        if time.monotonic() - last[0] > 0.5 or done >= image.size:
            events.progress("upload", done, image.size, "bytes")
            last[0] = time.monotonic()

    for attempt in range(1, target.upload_retries + 1):
        try:
            with _ProgressFile(image.path, report) as f:
                upid = pve.call(f"upload {name}", lambda: storage.upload.post(
                    content="import", filename=name, file=f, checksum=image.sha256,
                    **{"checksum-algorithm": "sha256"}))
            pve.wait(upid, f"upload {name}")
            return volid, True
        except PveConnectionError as e:
            if attempt == target.upload_retries:
                raise DeployError(f"upload of {name} failed {attempt} time(s); last: {e}") from None
            events.warning("upload", f"upload interrupted ({e}); retrying ({attempt}/{target.upload_retries})")
            time.sleep(min(2.0 ** attempt * 0.25, 10))
            if (found := _find_volume(pve, target.upload_storage, volid)) and int(found.get("size", -1)) == image.size:
                return volid, True
    raise AssertionError("unreachable")


def _vmids(pve: Pve) -> Iterator[int]:
    """Candidate VMIDs: PVE's next free one, or free ones from vmid_min up."""
    if pve.target.vmid_min is None:
        while True:
            yield int(pve.call("GET /cluster/nextid", pve.api.cluster.nextid.get))
    candidate = pve.target.vmid_min
    while True:
        try:
            yield int(pve.call("GET /cluster/nextid", lambda: pve.api.cluster.nextid.get(vmid=candidate)))
        except PveError:
            pass  # taken: PVE answers 400 "VM <id> already exists"
        candidate += 1


def create_vm(pve: Pve, params_for: Callable[[int], dict[str, Any]], events: Emitter) -> int:
    """Create the VM at the next free VMID; another client taking it first means a retry."""
    ids = _vmids(pve)
    for _ in range(VMID_TRIES * 20):
        vmid = next(ids)
        try:
            upid = pve.call(f"create VM {vmid}", lambda: pve.node.qemu.post(**params_for(vmid)))
        except PveError as e:
            if "already exists" in str(e):
                events.log("deploy", f"VMID {vmid} was taken meanwhile; trying the next one")
                continue
            raise
        try:
            pve.wait(upid, f"create VM {vmid}")
        except BaseException:
            destroy(pve, vmid)
            raise
        return vmid
    raise DeployError(f"no free VMID found after {VMID_TRIES * 20} tries")


def destroy(pve: Pve, vmid: int) -> bool:
    """Remove a VM with its disks; one that is already gone is fine."""
    try:
        upid = pve.call(f"destroy VM {vmid}", lambda: pve.node.qemu(vmid).delete(
            purge=1, **{"destroy-unreferenced-disks": 1}))
    except PveError as e:
        if e.status == 404 or "does not exist" in e.reason:
            return False
        raise
    pve.wait(upid, f"destroy VM {vmid}")
    return True


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
        from pim.engine.deploy.proxmox_ssh import deploy_via_shell

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
            from pim.engine.deploy.proxmox_ssh import remove_upload

            if remove_upload(target, volume.removeprefix("ssh:"), events, base_dir):
                removed.append(volume)
        elif delete_volume(pve, volume):
            removed.append(volume)
    for what in removed:
        events.log("delete", f"removed {what}")
    return removed
