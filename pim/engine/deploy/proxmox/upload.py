"""The PVE 8.4+ path: the qcow2 uploaded (streamed, constant memory) as `import` content.

The upload gets a content-addressed name, so the same bytes are never sent twice;
a connection dropped mid-upload is retried (proxmoxer does not retry).
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Callable

from pim.engine.deploy.model import BuiltImage, DeployError
from pim.engine.deploy.proxmox.api import Pve, PveConnectionError, delete_volume, find_volume
from pim.engine.deploy.proxmox.params import upload_name
from pim.engine.events import Emitter


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


def upload_import(pve: Pve, image: BuiltImage, events: Emitter) -> tuple[str, bool]:
    """The qcow2 as `import` content under its content-addressed name; (volid, uploaded)."""
    target = pve.target
    name = upload_name(image)
    volid = f"{target.upload_storage}:import/{name}"
    existing = find_volume(pve, target.upload_storage, volid)
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

    # Not a poll but a retry with a side effect, so not wait.until: proxmoxer and requests
    # never resend a streamed body, a dropped upload starts over from the first byte,
    # and the copy PVE may have finished meanwhile is looked for before each new try.
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
            if (found := find_volume(pve, target.upload_storage, volid)) and int(found.get("size", -1)) == image.size:
                return volid, True
    raise AssertionError("unreachable")
