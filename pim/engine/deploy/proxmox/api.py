"""The PVE API with a token (proxmoxer): calls, tasks polled to their end, VMs and volumes.

Every call's failure becomes a DeployError without secrets; every task is polled
to its end with a deadline, and a failed task's log tail is in the error.
"""

from __future__ import annotations

import copy
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import quote, urlparse

from pim.engine.deploy.model import DeployError
from pim.engine.deploy.proxmox.params import parse_version
from pim.engine.deploy.spec import ProxmoxTarget, resolve_token_secret
from pim.engine.errors import WaitTimeout
from pim.engine.events import Emitter
from pim.engine.retry import PVE_LOCKED, PVE_READ, PVE_TASK_POLL, Policy, retrying
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

    def call(self, what: str, fn: Callable[[], Any], *, method: str | None = None, policy: Policy | None = None,
             retry: bool = True) -> Any:
        """fn() (one proxmoxer request, e.g. `pve.node.qemu.get`), its result as PVE's JSON `data`.

        `method` is the request's HTTP method; without it, it is read off fn: a bound
        proxmoxer get/post/put/delete, or the one of those names a lambda uses. Anything
        else counts as a write. What is tried again (pim.engine.retry; each retry logged
        as a warning):
        - a read (GET) under `policy` (default PVE_READ, its deadline widened by two request
          timeouts: a deadline counts the tries' own time) after PveConnectionError, or a
          PveError whose `transient` is true (502/503/504, 595-597, a lock timeout);
        - a write (POST/PUT/DELETE) under `policy` (default PVE_LOCKED) only when PVE
          surely did nothing (`PveError.not_carried_out`: a 500 lock timeout, a 595), or
          the connection failed before the request went out (`PveConnectionError.sent`
          false). A write whose connection broke after it was sent (or a 502/503/504/
          596/597 answer) is not sent again: PVE may have carried it out, and only the
          caller can check (upload.py does).
        retry=False: one try. Raises DeployError for a 401 (naming the token) or an
        untrusted TLS certificate, PveError for any other HTTP error status (4xx at
        once), PveConnectionError when no answer came.
        """
        import requests
        from proxmoxer import ResourceException

        verb = (method or _method_of(fn)).upper()

        def once() -> Any:
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
                sent = not _never_sent(e)
                again = "" if verb == "GET" or not sent else " (not sent again: PVE may have carried it out)"
                raise PveConnectionError(f"{what}: no answer from {self.host}: {e.__class__.__name__}: {e}{again}",
                                         sent=sent) from None

        if not retry:
            return once()
        read = verb == "GET"
        return retrying(policy or self._patient(PVE_READ if read else PVE_LOCKED), once,
                        transient=_transient_read if read else _transient_write, what=what,
                        log=lambda line: self.events.warning("deploy", line))

    def _patient(self, policy: Policy) -> Policy:
        """`policy` with room for two more tries after one that ran into the request timeout:
        a deadline counts the tries' own time, and a hung request takes target.timeout."""
        if policy.deadline is None:
            return policy
        return replace(policy, deadline=policy.deadline + 2 * self.target.timeout)

    def version(self) -> tuple[int, int, int]:
        return parse_version(str(self.call("GET /version", self.api.version.get).get("version", "")))

    def wait(self, upid: str | None, what: str) -> None:
        """Poll task `upid` (a PVE UPID; None: the call finished at once) until it stops.

        Polls every 0.1 s, growing to 2 s, for at most target.task_timeout seconds. One
        poll that fails for a transient reason (as for any read in `call`: no answer,
        502/503/504, 595-597, a lock timeout) is tried again under PVE_TASK_POLL, so a
        long task outlives a few lost polls: at most PVE_TASK_POLL's attempts and
        deadline of consecutive failures, and never past task_timeout; then that error
        is raised. A permanent poll error (401, another 4xx, another 500) is raised at
        once. Raises DeployError with the task log's tail when the task failed (exit
        status other than OK or WARNINGS) or ran past task_timeout.
        """
        if not upid:  # some calls of older releases finish at once and return null
            return
        node = upid.split(":")[1] if upid.startswith("UPID:") else self.node_name
        tasks = self.api.nodes(node).tasks(quote(upid, safe=":@!"))  # one URL segment, whatever it holds
        ends = time.monotonic() + self.target.task_timeout

        def stopped() -> bool:
            left = max(0.0, ends - time.monotonic())
            patient = self._patient(PVE_TASK_POLL)
            policy = replace(patient, deadline=min(patient.deadline or left, left))
            status = self.call(f"task status of {what}", tasks.status.get, method="GET", policy=policy)
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
        """The last 20 lines of a task's log for an error message; best effort: one try, [] on any failure."""
        try:
            lines = self.call("task log", lambda: tasks.log.get(limit=1000), method="GET", retry=False)
        except DeployError:
            return []
        return [str(line.get("t", "")) for line in lines][-20:]


class PveError(DeployError):
    """An answer from PVE that is an error: `status` (HTTP), `reason` (PVE puts its message in
    the reason phrase), `errors` (per-parameter messages of a 400, or None).

    Which answers may work a moment later (`transient`), from PVE's sources:
    - 595, 596, 597: AnyEvent::HTTP's own codes, which pveproxy passes on as they are
      when it forwards a call to the node that must run it (pve-http-server,
      PVE::APIServer::AnyEvent::proxy_request answers with http_request's Status and
      Reason; proxmoxer's ANYEVENT_HTTP_STATUS_CODES lists them): that node is down or
      unreachable. AnyEvent::HTTP's documentation: 595 "errors during connection
      establishment, proxy handshake" (the call never reached the node, so even a
      write may be sent again), 596 "errors during TLS negotiation, request sending
      and header processing", 597 "errors during body receiving or processing".
    - 502, 503, 504: not sent by pveproxy itself, but by a reverse proxy or load
      balancer in front of it.
    - 500 with a lock timeout (`lock_timeout`): "can't lock file '...' - got timeout"
      (PVE::Tools::lock_file_full, as PVE::AbstractConfig's lock_config uses) or
      "cfs-lock '...' error: got lock request timeout" (PVE::Cluster::cfs_lock). PVE
      gave up waiting for a lock another task held, before doing anything.
    Every other status is permanent: 4xx (bad parameters, 403 permissions), 501, and
    other 500s (PVE's handlers die with 500 for refusals such as "already exists").
    """

    TRANSIENT_STATUSES = frozenset({502, 503, 504, 595, 596, 597})
    LOCK_TIMEOUT = re.compile(r"can't lock file .*got timeout|got lock request timeout")

    def __init__(self, what: str, status: int, reason: str, errors: Any = None):
        self.status, self.reason, self.errors = status, reason, errors
        detail = f" {errors}" if errors else ""
        super().__init__(f"{what}: PVE answered {status} {reason}{detail}")

    @property
    def lock_timeout(self) -> bool:
        """PVE timed out waiting for a lock (500) and did nothing: safe to send again, even a write."""
        return self.status == 500 and bool(self.LOCK_TIMEOUT.search(self.reason))

    @property
    def transient(self) -> bool:
        """A read may succeed when sent again (see the class docstring)."""
        return self.status in self.TRANSIENT_STATUSES or self.lock_timeout

    @property
    def not_carried_out(self) -> bool:
        """PVE surely did nothing (a lock timeout, or 595: the node that runs it was never
        reached): even a write may be sent again."""
        return self.status == 595 or self.lock_timeout


class PveConnectionError(DeployError):
    """No answer from PVE: the connection failed or dropped, unlike an answer from PVE.

    `sent` is False when it failed before the request went out (connection refused,
    connect timeout, name lookup): PVE cannot have acted on it. True when PVE may have
    received it (and, for a write, carried it out)."""

    def __init__(self, message: str, sent: bool = True):
        self.sent = sent
        super().__init__(message)


def _transient_read(e: Exception) -> bool:
    return isinstance(e, PveConnectionError) or isinstance(e, PveError) and e.transient


def _transient_write(e: Exception) -> bool:
    return isinstance(e, PveConnectionError) and not e.sent or isinstance(e, PveError) and e.not_carried_out


def _never_sent(e: Exception) -> bool:
    """A requests error raised before the request left: connect timeout, refused, no such host."""
    import requests
    from urllib3.exceptions import NewConnectionError

    if isinstance(e, requests.exceptions.ConnectTimeout):
        return True
    reason = getattr(e.args[0], "reason", None) if e.args else None
    return isinstance(e, requests.exceptions.ConnectionError) and isinstance(reason, NewConnectionError)


_VERBS = {"get": "GET", "post": "POST", "create": "POST", "put": "PUT", "set": "PUT", "delete": "DELETE"}


def _method_of(fn: Callable[[], Any]) -> str:
    """The HTTP method of a proxmoxer call: a bound get/post/... or the one such name a lambda
    uses; anything else counts as a write (POST), which is never sent again blindly."""
    from proxmoxer import ProxmoxResource

    name = getattr(fn, "__name__", "")
    if isinstance(getattr(fn, "__self__", None), ProxmoxResource) and name in _VERBS:
        return _VERBS[name]
    code = getattr(fn, "__code__", None)
    used = {_VERBS[n] for n in (code.co_names if code is not None else ()) if n in _VERBS}
    return used.pop() if len(used) == 1 else "POST"


# ---------------------------------------------------------------- VMs and volumes

def _volume_path(volid: str) -> str:
    # One URL segment: PVE volume ids contain '/', as in local:import/x.qcow2.
    return quote(volid, safe=":")


def find_volume(pve: Pve, storage: str, volid: str) -> dict[str, Any] | None:
    items = pve.call(f"list {storage}", lambda: pve.node.storage(storage).content.get(content="import"))
    return next((i for i in items if i.get("volid") == volid), None)


def delete_volume(pve: Pve, volid: str) -> bool:
    """Delete volume `volid` ("storage:content/name") and wait for PVE's task; False if it
    was already gone (404, "does not exist", "not found"). A DELETE is a write (Pve.call):
    only a lock timeout or a connection that never went out is retried; any other
    PveError or PveConnectionError is raised."""
    storage = volid.split(":", 1)[0]
    try:
        upid = pve.call(f"delete {volid}", lambda: pve.node.storage(storage).content(_volume_path(volid)).delete(),
                        method="DELETE")
    except PveError as e:
        if e.status == 404 or "does not exist" in e.reason or "not found" in e.reason.lower():
            return False
        raise
    pve.wait(upid, f"delete {volid}")
    return True


def _vmids(pve: Pve) -> Iterator[int]:
    """Candidate VMIDs: PVE's next free one, or free ones from vmid_min up.

    GET /cluster/nextid is a read (retried as Pve.call says). With vmid_min, only PVE's
    "VM <id> already exists" answer (400) means taken; any other PveError (403, 500) is
    raised at once."""
    if pve.target.vmid_min is None:
        while True:
            yield int(pve.call("GET /cluster/nextid", pve.api.cluster.nextid.get, method="GET"))
    candidate = pve.target.vmid_min
    while True:
        try:
            yield int(pve.call(f"GET /cluster/nextid?vmid={candidate}",
                               lambda: pve.api.cluster.nextid.get(vmid=candidate), method="GET"))
        except PveError as e:
            # taken: 400 "Parameter verification failed." with {vmid: "VM <id> already exists"}
            if "already exists" not in str(e):
                raise
        candidate += 1


def create_vm(pve: Pve, params_for: Callable[[int], dict[str, Any]], events: Emitter) -> int:
    """Create the VM (params_for(vmid): the POST's parameters) at the next free VMID and
    wait for the task; returns the VMID. Another client taking the VMID first ("already
    exists") moves on to the next one, up to VMID_TRIES * 20 candidates. The POST is a
    write: retried only on a lock timeout or a connection that never went out. Raises
    PveError / PveConnectionError (a broken connection after the POST: the VM may exist;
    the next deploy removes it, by its tag) or DeployError when the task fails, after
    removing the VM (a failure to remove it is a warning, not the error).
    """
    ids = _vmids(pve)
    for _ in range(VMID_TRIES * 20):
        vmid = next(ids)
        try:
            upid = pve.call(f"create VM {vmid}", lambda: pve.node.qemu.post(**params_for(vmid)), method="POST")
        except PveError as e:
            if "already exists" in str(e):
                events.log("deploy", f"VMID {vmid} was taken meanwhile; trying the next one")
                continue
            raise
        try:
            pve.wait(upid, f"create VM {vmid}")
        except BaseException:
            destroy_after_failure(pve, vmid)
            raise
        return vmid
    raise DeployError(f"no free VMID found after {VMID_TRIES * 20} tries")


def destroy(pve: Pve, vmid: int) -> bool:
    """Remove VM `vmid` with its disks and wait for the task; False if it was already gone
    (404, "does not exist"). A DELETE is a write (Pve.call): only a lock timeout or a
    connection that never went out is retried; other errors are raised."""
    try:
        upid = pve.call(f"destroy VM {vmid}", lambda: pve.node.qemu(vmid).delete(
            purge=1, **{"destroy-unreferenced-disks": 1}), method="DELETE")
    except PveError as e:
        if e.status == 404 or "does not exist" in e.reason:
            return False
        raise
    pve.wait(upid, f"destroy VM {vmid}")
    return True


def destroy_after_failure(pve: Pve, vmid: int) -> None:
    """Remove VM `vmid` while another error is on its way up: call it in an `except` block,
    then `raise`. A failure to remove it is logged as a warning naming the VM, never
    raised, so the first error stays the one reported."""
    try:
        destroy(pve, vmid)
    except Exception as e:  # noqa: BLE001 - the error being raised is the news, not this one
        pve.events.warning("deploy", f"VM {vmid} was left behind: removing it after the failure failed too ({e}); "
                                     "the next deploy removes it (it carries this build's tag), or remove it by hand")


def already_there(pve: Pve, volid: str, size: int, events: Emitter) -> bool:
    """Whether `volid` (a content-addressed import volume) is on pve's node's storage whole
    (its size is `size` bytes): then nothing need be sent. A copy of another size under
    that name is broken and is deleted, and False returned."""
    existing = find_volume(pve, volid.split(":", 1)[0], volid)
    if existing and int(existing.get("size", -1)) == size:
        events.log("upload", f"{volid} is already on {pve.node_name}'s storage: nothing sent")
        return True
    if existing:
        delete_volume(pve, volid)
    return False
