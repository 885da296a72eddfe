"""The fallback for PVE releases before 8.4: the node's shell brings the disk in.

Before 8.4 the upload API takes no disk images as `import` content, and
`import-from` accepts only volumes of type `images` or, from root@pam alone, an
absolute path: an API token cannot import an uploaded disk. So the qcow2 goes to
the node over SFTP (streamed, under its content-addressed name, published by
rename so a partial file never looks finished), `qm importdisk` turns it into
a disk of the VM, and the API attaches it as scsi0. This is the route PVE's own
documentation gives for cloud images (qm importdisk / qm disk import).
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import shlex
import time
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pim.engine.deploy.model import BuiltImage, DeployError
from pim.engine.deploy.proxmox.api import Pve, create_vm, destroy_after_failure
from pim.engine.deploy.proxmox.params import disk_options, upload_name, vm_params
from pim.engine.deploy.spec import ProxmoxTarget
from pim.engine.errors import InputError
from pim.engine.events import Emitter
from pim.engine.retry import PVE_UPLOAD, retrying


def needs_ssh_message(version: tuple[int, int, int], target_hint: str = "ssh") -> str:
    v = ".".join(map(str, version))
    return (f"PVE {v} cannot import an uploaded disk image through its API with a token (that needs PVE 8.4 or "
            f"later). Set '{target_hint}' in the target (host, user, key_file) so PIM can use the node's shell "
            "(SFTP upload + qm importdisk), or upgrade PVE.")


def imported_volume(output: str, config: dict[str, Any]) -> str | None:
    """The volume qm importdisk made: from its output, else the last unusedN in the config."""
    m = re.search(r"unused\d+:\s*([^'\s]+)", output)
    if m:
        return m.group(1)
    unused = sorted((k for k in config if re.fullmatch(r"unused\d+", k)), key=lambda k: int(k[6:]))
    return str(config[unused[-1]]).split(",")[0] if unused else None


class NodeShellLost(DeployError):
    """The SSH connection to the node could not be made or broke (refused, reset, timed
    out, closed mid-transfer): a new connection may work. Not raised for a refused key,
    an unknown host key or an error the node answered (permission denied, disk full)."""


# Errors that are the node's answer, never a lost connection: permission denied, disk or quota full.
_NODE_REFUSALS = (errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def connection_lost(e: BaseException, shell: "NodeShell | None") -> bool:
    """Whether e, raised while using `shell`, means the SSH connection is gone (worth a new one).

    paramiko.SSHException (except a refused key or host key), EOFError, ConnectionError
    and socket timeouts are; an OSError carrying EACCES/EPERM/ENOSPC/EDQUOT/EROFS is not.
    Any other OSError (paramiko's "Socket is closed" has no errno) counts when the
    transport is no longer active; SFTP's generic "Failure" (a full disk on the node,
    say) comes over a live connection and does not.
    """
    import socket

    import paramiko

    if isinstance(e, NodeShellLost):
        return True
    if isinstance(e, (paramiko.AuthenticationException, paramiko.BadHostKeyException)):
        return False
    if isinstance(e, OSError) and e.errno in _NODE_REFUSALS:
        return False
    if isinstance(e, (paramiko.SSHException, EOFError, ConnectionError, socket.timeout)):
        return True
    if isinstance(e, OSError) and shell is not None:
        transport = shell.client.get_transport()
        return transport is None or not transport.is_active()
    return False


class NodeShell:
    """An SSH connection to the PVE node: SFTP for files, exec for qm. Host keys are verified.

    Connecting raises NodeShellLost when the node cannot be reached for now (refused,
    reset, timed out, no SSH banner) and DeployError when it refuses us for good (the
    key, an unknown or changed host key, no common algorithms, a missing key file)."""

    def __init__(self, target: ProxmoxTarget, events: Emitter, base_dir: Path | None = None):
        import paramiko

        assert target.ssh is not None
        ssh, base = target.ssh, base_dir or Path(".")
        self.events = events
        self.client = paramiko.SSHClient()
        if ssh.known_hosts:
            self.client.load_host_keys(str(base / os.path.expanduser(ssh.known_hosts)))
        else:
            self.client.load_system_host_keys()
        self.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        host = ssh.host or urlparse(target.api_url).hostname or ""
        key_file = str(base / os.path.expanduser(ssh.key_file)) if ssh.key_file else None
        try:
            self.client.connect(host, port=ssh.port, username=ssh.user, key_filename=key_file,
                                look_for_keys=key_file is None, allow_agent=key_file is None, timeout=target.timeout)
            self.sftp = self.client.open_sftp()
        except (paramiko.SSHException, EOFError, OSError) as e:
            self.client.close()
            text = str(e)
            # RejectPolicy and a failed negotiation raise a plain SSHException: a refusal, not a lost connection
            refused = "known_hosts" in text or "Incompatible" in text or "No authentication methods" in text
            if isinstance(e, paramiko.ssh_exception.NoValidConnectionsError) or (
                    not refused and connection_lost(e, None)):
                raise NodeShellLost(f"SSH to {host}:{ssh.port} failed: {text or e.__class__.__name__}") from None
            if isinstance(e, paramiko.SSHException):
                raise DeployError(f"SSH to {ssh.user}@{host}:{ssh.port} failed: {e}") from None
            raise DeployError(f"SSH to {host}:{ssh.port} failed: {getattr(e, 'strerror', None) or e}") from None

    def __enter__(self) -> "NodeShell":
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def size(self, path: str) -> int | None:
        try:
            return int(self.sftp.stat(path).st_size or 0)
        except FileNotFoundError:
            return None

    def run(self, argv: list[str], timeout: float) -> tuple[int, str]:
        _, stdout, _ = self.client.exec_command(shlex.join(argv) + " 2>&1", timeout=timeout)
        out = stdout.read().decode(errors="replace")
        return stdout.channel.recv_exit_status(), out

    def put(self, local: Path, remote: str, size: int) -> None:
        """Stream local to remote; the final name appears only once the file is complete."""
        self._mkdirs(posixpath.dirname(remote))
        partial = f"{remote}.part-{os.getpid()}"
        last = [0.0]

        def report(done: int, total: int) -> None:
            if time.monotonic() - last[0] > 0.5 or done >= total:
                self.events.progress("upload", done, size, "bytes over SFTP")
                last[0] = time.monotonic()

        try:
            with open(local, "rb") as f:
                self.sftp.putfo(f, partial, file_size=size, callback=report)
            self.sftp.posix_rename(partial, remote)
        except BaseException:
            try:
                self.sftp.remove(partial)
            except (OSError, EOFError):
                pass
            raise

    def remove(self, path: str) -> bool:
        try:
            self.sftp.remove(path)
            return True
        except FileNotFoundError:
            return False

    def _mkdirs(self, path: str) -> None:
        parts = [p for p in path.split("/") if p]
        for i in range(1, len(parts) + 1):
            sub = "/" + "/".join(parts[:i])
            try:
                self.sftp.stat(sub)
            except FileNotFoundError:
                self.sftp.mkdir(sub, 0o700)


def _ensure_uploaded(shell: NodeShell, image: BuiltImage, path: str, target: ProxmoxTarget) -> bool:
    if shell.size(path) == image.size:
        shell.events.log("upload", f"{path} is already on the node: nothing uploaded")
        return False
    assert image.path is not None
    shell.put(image.path, path, image.size)
    rc, out = shell.run(["sha256sum", path], timeout=target.task_timeout)
    if rc != 0 or out.split()[:1] != [image.sha256]:
        shell.remove(path)
        raise DeployError(f"{path} on the node does not match the built image (sha256sum: {out.strip()[:80]})")
    return True


def deploy_via_shell(pve: Pve, image: BuiltImage, version: tuple[int, int, int], events: Emitter,
                     base_dir: Path | None) -> tuple[str, bool, int]:
    """Upload over SFTP, create the VM, qm importdisk, attach as scsi0. Returns (upload, uploaded, vmid)."""
    target = pve.target
    if target.ssh is None:
        raise InputError(needs_ssh_message(version))
    events.log("deploy", f"PVE {'.'.join(map(str, version))}: SFTP upload + qm importdisk (fallback before 8.4)")
    import paramiko

    path = posixpath.join(target.ssh.upload_dir, upload_name(image))
    shell: NodeShell | None = None
    tries = [0]

    def attempt() -> bool:
        # A new connection for each try after a lost one; a connection that cannot be made
        # counts as a try too. Only a lost connection is retried (connection_lost).
        nonlocal shell
        tries[0] += 1
        try:
            if shell is None:
                shell = NodeShell(target, events, base_dir)
            return _ensure_uploaded(shell, image, path, target)
        except (paramiko.SSHException, EOFError, OSError) as e:
            lost = connection_lost(e, shell)
            if shell is not None:
                shell.client.close()
                shell = None
            text = getattr(e, "strerror", None) or str(e) or e.__class__.__name__  # EOFError() says nothing
            if lost:
                raise NodeShellLost(f"SFTP upload of {path}: connection lost: {text}") from None
            raise DeployError(f"SFTP upload of {path} failed: {text}") from None

    try:
        try:
            uploaded = retrying(replace(PVE_UPLOAD, attempts=target.upload_retries), attempt,
                                transient=lambda e: isinstance(e, NodeShellLost), what="SFTP upload interrupted",
                                log=lambda line: events.warning("upload", line))
        except NodeShellLost as e:
            raise DeployError(f"SFTP upload of {path} failed {tries[0]} time(s); last: {e}") from None
        assert shell is not None
        upload = f"ssh:{path}"
        vmid = create_vm(pve, lambda vmid: vm_params(image, target, vmid, None, upload), events)
        try:
            rc, out = shell.run(["qm", "importdisk", str(vmid), path, target.storage], timeout=target.task_timeout)
            if rc != 0:
                raise DeployError(f"qm importdisk {vmid} failed with status {rc}", out.splitlines()[-20:])
            config = pve.call(f"VM {vmid} config", pve.node.qemu(vmid).config.get, method="GET")
            volume = imported_volume(out, config)
            if not volume:
                raise DeployError(f"qm importdisk {vmid} left no unused disk to attach", out.splitlines()[-20:])
            upid = pve.call(f"attach disk to {vmid}", lambda: pve.node.qemu(vmid).config.post(
                scsi0=f"{volume},{disk_options(target)}", boot="order=scsi0"), method="POST")
            pve.wait(upid, f"attach disk to VM {vmid}")
        except BaseException:
            destroy_after_failure(pve, vmid)
            raise
    finally:
        if shell is not None:
            shell.client.close()
    return upload, uploaded, vmid


def remove_upload(target: ProxmoxTarget, path: str, events: Emitter, base_dir: Path | None) -> bool:
    if target.ssh is None:
        events.warning("delete", f"{path} stays on the node: the target has no 'ssh' settings to remove it")
        return False
    with NodeShell(target, events, base_dir) as shell:
        return shell.remove(path)
