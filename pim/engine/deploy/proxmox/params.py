"""Pure parts of a Proxmox deploy: version rules, content-addressed names, VM parameters.

No network here: these functions are tested by comparing values.
"""

from __future__ import annotations

import re
from typing import Any

from pim.engine.deploy.model import BuiltImage, DeployError
from pim.engine.deploy.spec import ProxmoxTarget

IMPORT_CONTENT_SINCE = (8, 4)  # first release taking .qcow2 uploads as `import` content


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
    lines += [f"{name}: sha256 {digest}" for name, digest in image.attestation_digests.items()]
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
    # The cloud-init drive goes where the guest finds it: on SCSI for UEFI guests (q35
    # has no legacy IDE bus, and guests on it often do not see an ide2 drive:
    # packer-plugin-proxmox#74, bpg/terraform-provider-proxmox#575) and for aarch64 (no
    # IDE at all); on the usual ide2 for i440fx/SeaBIOS guests.
    params["scsi1" if uefi else "ide2"] = f"{target.storage}:cloudinit"
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
