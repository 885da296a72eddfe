"""The PVE 8.4+ path: the qcow2 uploaded (streamed, constant memory) as `import` content.

The upload gets a content-addressed name, so the same bytes are never sent twice;
a connection dropped mid-upload is retried (proxmoxer does not retry) under the
PVE_UPLOAD policy, after looking for the copy PVE may have finished anyway.
"""

from __future__ import annotations

import io
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from pim.engine.deploy.model import BuiltImage, DeployError
from pim.engine.deploy.proxmox.api import Pve, PveConnectionError, already_there, find_volume
from pim.engine.deploy.proxmox.params import upload_name
from pim.engine.events import Emitter
from pim.engine.retry import PVE_UPLOAD, retrying


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
    """The qcow2 as `import` content under its content-addressed name; (volid, uploaded).

    A connection that breaks during the upload or its task's polls (PveConnectionError)
    starts the upload over from the first byte, up to target.upload_retries tries in all
    (PVE_UPLOAD's waits); before each new try, a copy PVE finished anyway is looked for
    and taken. A lock timeout is retried inside Pve.call (the file is opened anew each
    time). Raises DeployError when the tries run out, PveError when PVE refuses the
    upload, DeployError when its task fails (a checksum mismatch, say).
    """
    target = pve.target
    name = upload_name(image)
    volid = f"{target.upload_storage}:import/{name}"
    if already_there(pve, volid, image.size, events):
        return volid, False
    assert image.path is not None
    path = image.path
    storage = pve.node.storage(target.upload_storage)
    last = [0.0]

    def report(done: int) -> None:
        if time.monotonic() - last[0] > 0.5 or done >= image.size:
            events.progress("upload", done, image.size, "bytes")
            last[0] = time.monotonic()

    def send() -> str | None:
        with _ProgressFile(path, report) as f:
            return storage.upload.post(content="import", filename=name, file=f, checksum=image.sha256,
                                       **{"checksum-algorithm": "sha256"})

    # proxmoxer and requests never resend a streamed body: a dropped upload starts over from
    # the first byte, and the copy PVE may have finished meanwhile is looked for first.
    tries = [0]

    def attempt() -> None:
        tries[0] += 1
        if tries[0] > 1:
            found = find_volume(pve, target.upload_storage, volid)
            if found and int(found.get("size", -1)) == image.size:
                return
        upid = pve.call(f"upload {name}", send, method="POST")
        pve.wait(upid, f"upload {name}")

    try:
        retrying(replace(PVE_UPLOAD, attempts=target.upload_retries), attempt,
                 transient=lambda e: isinstance(e, PveConnectionError), what="upload interrupted",
                 log=lambda line: events.warning("upload", line))
    except PveConnectionError as e:
        raise DeployError(f"upload of {name} failed {tries[0]} time(s); last: {e}") from None
    return volid, True
