"""The PVE API with a token (proxmoxer): calls, tasks polled to their end, VMs and volumes.

Every call's failure becomes a DeployError without secrets; every task is polled
to its end with a deadline, and a failed task's log tail is in the error.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import quote, urlparse

from pim.engine.deploy.model import DeployError
from pim.engine.deploy.proxmox.params import parse_version
from pim.engine.deploy.spec import ProxmoxTarget, resolve_token_secret
from pim.engine.errors import WaitTimeout
from pim.engine.events import Emitter
from pim.engine.wait import until

VMID_TRIES = 5


# ---------------------------------------------------------------- API client

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
        self.node_name = str(target.node)
        self.node = self.api.nodes(self.node_name)

    def on(self, node: str) -> "Pve":
        """The same API client (connection, token, retries) acting on another cluster node."""
        other = copy.copy(self)
        other.node_name, other.node = node, self.api.nodes(node)
        return other

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

        def stopped() -> bool:
            status = self.call(f"task status of {what}", tasks.status.get)
            if status.get("status") != "stopped":
                return False
            exit_status = str(status.get("exitstatus", ""))
            if exit_status == "OK" or exit_status.startswith("WARNINGS"):
                return True
            raise DeployError(f"{what} failed: {exit_status or 'no exit status'}", self._log_tail(tasks))

        try:
            until(stopped, what=what, timeout=self.target.task_timeout, interval=0.1, backoff=1.5, max_interval=2.0)
        except WaitTimeout:
            raise DeployError(f"{what} did not finish within {self.target.task_timeout:.0f} s (task {upid})",
                              self._log_tail(tasks)) from None

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


# ---------------------------------------------------------------- VMs and volumes

def _volume_path(volid: str) -> str:
    # One URL segment: PVE volume ids contain '/', as in local:import/x.qcow2.
    return quote(volid, safe=":")


def find_volume(pve: Pve, storage: str, volid: str) -> dict[str, Any] | None:
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
