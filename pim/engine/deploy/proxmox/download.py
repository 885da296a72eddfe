"""PVE fetches the qcow2 itself (download-url, `import` content, PVE 8.4+): nothing goes
through the client.

POST /nodes/{node}/storage/{storage}/download-url with content=import, the same
content-addressed file name an upload gets, and the image's sha256 (PVE's API:
`checksum` + `checksum-algorithm`; the task fails on a mismatch, so a URL serving
other bytes cannot make a template). The task runs on the node; its failure (an
unreachable URL, an HTTP error, a checksum mismatch) ends the deploy with PVE's log.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from pim.engine.deploy.model import BuiltImage, DeployError
from pim.engine.deploy.proxmox.api import Pve, already_there
from pim.engine.deploy.proxmox.params import upload_name
from pim.engine.events import Emitter


def image_url(template: str, image: BuiltImage) -> str:
    """The target's image_url with {name}, {key}, {sha256} and {filename} filled in."""
    fields = {"name": image.name, "key": image.key, "sha256": image.sha256, "filename": upload_name(image)}
    return template.format_map(fields)


def download_import(pve: Pve, image: BuiltImage, events: Emitter) -> tuple[str, bool]:
    """Have pve's node fetch the image as `import` content; (volid, fetched).

    An identical copy already on the storage (same name and size) is used as it is:
    (volid, False). Raises DeployError (or PveError) when PVE refuses the request or
    its download task fails; a partial file is PVE's to remove (its task does).
    """
    target = pve.target
    assert target.image_url is not None
    name = upload_name(image)
    volid = f"{target.upload_storage}:import/{name}"
    if already_there(pve, volid, image.size, events):
        return volid, False
    url = image_url(target.image_url, image)
    query = urlsplit(url).query  # a signed URL's signature: a secret while it is valid
    shown = url.replace(query, "…") if query else url
    events.add_secret(query or None)
    events.log("upload", f"PVE node {pve.node_name} fetches {shown} into {volid}")
    storage = pve.node.storage(target.upload_storage)
    try:
        upid = pve.call(f"download-url {name}", lambda: storage("download-url").post(
            content="import", filename=name, url=url, checksum=image.sha256, **{"checksum-algorithm": "sha256"}))
        pve.wait(upid, f"download of {shown} by {pve.node_name}")
    except DeployError as e:
        if not query:
            raise
        # PVE's task log names the URL it fetched: keep the signature out of the error
        raise DeployError(_redact(e.args[0] if e.args else "", query), _redact(e.tail, query)) from None
    return volid, True


def _redact(value: Any, secret: str) -> Any:
    if isinstance(value, str):
        return value.replace(secret, "…")
    if isinstance(value, list):
        return [_redact(v, secret) for v in value]
    return value
