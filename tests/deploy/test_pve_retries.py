"""Which Proxmox calls are tried again and which fail at once, each against the PVE fake
behind a proxy that injects the fault for real: an HTTPS proxy (FaultProxy) answering
chosen requests with PVE's transient statuses (503, 595, a 500 lock timeout) or a reset,
and a TCP proxy (DropProxy) cutting the node shell's SSH connection. The retry policies
keep their tries and deadlines; only their waits are shortened."""

from __future__ import annotations

import errno
import hashlib
import io
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import pytest

from pim.engine.deploy.model import DeployError
from pim.engine.deploy.proxmox import api, shell, upload
from pim.engine.deploy.proxmox import backend as proxmox
from pim.engine.deploy.proxmox.api import Pve, PveConnectionError, PveError
from pim.engine.deploy.proxmox.params import upload_name
from pim.engine.retry import PVE_LOCKED, PVE_READ, PVE_TASK_POLL
from tests.deploy.conftest import Disk, Recorder, pve_target
from tests.deploy.proxy import DropProxy, FaultProxy

KIB = 1024
LIST_VMS = r"/nodes/pve/qemu$"
CREATE = r"/nodes/pve/qemu$"
TEMPLATE = r"/qemu/\d+/template$"
CREATE_POLL = r"/tasks/[^/]*:qmcreate:[^/]*/status$"
DESTROY = r"/qemu/\d+\?"  # DELETE /nodes/pve/qemu/<vmid>?purge=1&... as the proxy sees it
DESTROYED = r"/qemu/\d+$"  # the same, as the fake records it (no query)
NEXTID_FROM = r"/cluster/nextid\?vmid="
LOCKED = "500 can't lock file '/var/lock/qemu-server/lock-100.conf' - got timeout"
CFS_LOCKED = "500 cfs-lock 'storage-local-lvm' error: got lock request timeout"
FOREVER = 10 ** 6


@pytest.fixture(autouse=True)
def quick_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The policies as they are (tries, deadlines), with waits of at most 20 ms."""
    for module in (api, upload, shell):
        for name in ("PVE_READ", "PVE_LOCKED", "PVE_TASK_POLL", "PVE_UPLOAD"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, replace(getattr(module, name), first_wait=0.01, max_wait=0.02))


@pytest.fixture
def proxy(pve: Any, pve_cert: tuple[str, str]) -> Iterator[FaultProxy]:
    made = FaultProxy(pve.port, *pve_cert)
    yield made
    made.stop()


def through(proxy: FaultProxy, pve: Any, pve_cert: tuple, **kw: Any) -> Any:
    return pve_target(pve, pve_cert[0], api_url=f"https://127.0.0.1:{proxy.port}", **kw)


def tries_logged(events: Recorder) -> int:
    return sum(1 for e in events.events if e.kind == "warning" and "; try " in e.message)


def warnings(events: Recorder) -> str:
    return "\n".join(e.message for e in events.events if e.kind == "warning")


# ---------------------------------------------------------------- reads

@pytest.mark.parametrize("answer", ["reset", "502 Bad Gateway", "503 Service Unavailable", "504 Gateway Timeout",
                                    "595 No route to host", "596 Connection timed out", LOCKED, CFS_LOCKED])
def test_a_read_that_meets_a_transient_failure_is_retried_and_succeeds(
        answer: str, pve: Any, pve_env: str, pve_cert: tuple, disk: Disk, events: Recorder,
        proxy: FaultProxy) -> None:
    fault = proxy.add("GET", LIST_VMS, answer, times=2)
    result = proxmox.deploy(through(proxy, pve, pve_cert), disk.image, events.emitter)
    assert result.created and pve.vms[result.resources["vmid"]]["template"] == 1
    assert fault.served == 2 and proxy.count("GET", LIST_VMS) == 3
    assert f"try 3 of {PVE_READ.attempts}" in warnings(events)


def test_a_read_that_keeps_failing_gives_up_after_pve_read_s_tries(pve: Any, pve_env: str, pve_cert: tuple,
                                                                    disk: Disk, events: Recorder,
                                                                    proxy: FaultProxy) -> None:
    proxy.add("GET", LIST_VMS, "503 Service Unavailable", times=FOREVER)
    with pytest.raises(PveError, match="503") as err:
        proxmox.deploy(through(proxy, pve, pve_cert), disk.image, events.emitter)
    assert err.value.status == 503
    assert proxy.count("GET", LIST_VMS) == PVE_READ.attempts
    assert f"gave up after {PVE_READ.attempts} tries" in err.value.__notes__[0]


def test_every_read_of_deploy_exists_and_delete_rides_out_a_transient_answer(
        pve: Any, pve_env: str, pve_cert: tuple, disk: Disk, events: Recorder, proxy: FaultProxy) -> None:
    reads = [r"/version$", LIST_VMS, r"/storage/local/content\?", r"/cluster/nextid$", r"/tasks/.*/status$",
             r"/qemu/\d+/config$"]
    faults = [proxy.add("GET", path, answer, times=1) for path, answer in
              zip(reads, ["503 Service Unavailable", "reset", "595 No route to host", "502 Bad Gateway",
                          "596 Connection timed out", "504 Gateway Timeout"])]
    target = through(proxy, pve, pve_cert)
    made = proxmox.deploy(target, disk.image, events.emitter)  # version, list, content, nextid, task polls
    assert proxmox.exists(target, disk.image, events.emitter).resources == made.resources  # VM config
    assert proxmox.delete(target, disk.image, events.emitter) == [f"vm/{made.resources['vmid']}",
                                                                   made.resources["volume"]]
    assert [f.served for f in faults] == [1] * len(reads)
    assert pve.vms == {} and pve.files == {}


def test_the_log_of_a_failed_task_is_read_once_and_never_hides_the_failure(
        pve: Any, pve_env: str, pve_cert: tuple, disk: Disk, events: Recorder, proxy: FaultProxy) -> None:
    pve.fail_tasks["qmcreate"] = "unable to create VM: lvcreate failed"
    proxy.add("GET", r"/tasks/[^/]*/log\?", "503 Service Unavailable", times=FOREVER)
    with pytest.raises(DeployError, match="create VM 100 failed: unable to create VM: lvcreate failed") as err:
        proxmox.deploy(through(proxy, pve, pve_cert), disk.image, events.emitter)
    assert err.value.tail == []  # no log tail, and no retries for it
    assert proxy.count("GET", r"/tasks/[^/]*/log\?") == 1


@pytest.mark.parametrize("answer", ["403 Permission check failed (/vms, VM.Audit)",
                                    "400 Parameter verification failed.", "500 storage 'local' is not online",
                                    "501 Method 'GET /nodes' not implemented",
                                    "500 VM 100 qmp command 'guest-ping' failed - got timeout"])
def test_a_permanent_answer_to_a_read_fails_at_once(answer: str, pve: Any, pve_env: str, pve_cert: tuple,
                                                    disk: Disk, events: Recorder, proxy: FaultProxy) -> None:
    proxy.add("GET", LIST_VMS, answer, times=FOREVER)
    with pytest.raises(PveError) as err:
        proxmox.deploy(through(proxy, pve, pve_cert), disk.image, events.emitter)
    assert err.value.status == int(answer[:3])
    assert proxy.count("GET", LIST_VMS) == 1 and tries_logged(events) == 0


def test_a_401_fails_at_once_naming_the_token(pve: Any, pve_env: str, pve_cert: tuple, disk: Disk,
                                              events: Recorder, proxy: FaultProxy) -> None:
    proxy.add("GET", LIST_VMS, "401 permission denied - invalid PVE ticket", times=FOREVER)
    with pytest.raises(DeployError, match="refused token pim@pve!deploy"):
        proxmox.deploy(through(proxy, pve, pve_cert), disk.image, events.emitter)
    assert proxy.count("GET", LIST_VMS) == 1


# ---------------------------------------------------------------- writes

@pytest.mark.parametrize("path", [CREATE, TEMPLATE])
def test_a_write_cut_off_after_pve_got_it_is_not_sent_again(path: str, pve: Any, pve_env: str, pve_cert: tuple,
                                                            disk: Disk, events: Recorder, proxy: FaultProxy) -> None:
    proxy.add("POST", path, "reset-after")
    with pytest.raises(PveConnectionError, match="not sent again: PVE may have carried it out"):
        proxmox.deploy(through(proxy, pve, pve_cert), disk.image, events.emitter)
    assert pve.count("POST", path) == 1  # PVE got it once, and only once
    assert proxy.count("POST", path) == 1 and tries_logged(events) == 0


@pytest.mark.parametrize("answer", [LOCKED, CFS_LOCKED, "595 No route to host"])
def test_a_write_pve_surely_did_not_carry_out_is_sent_again(answer: str, pve: Any, pve_env: str, pve_cert: tuple,
                                                            disk: Disk, events: Recorder, proxy: FaultProxy) -> None:
    fault = proxy.add("POST", CREATE, answer, times=2)
    result = proxmox.deploy(through(proxy, pve, pve_cert), disk.image, events.emitter)
    assert result.created and fault.served == 2
    assert proxy.count("POST", CREATE) == 3 and pve.count("POST", CREATE) == 1
    assert f"try 3 of {PVE_LOCKED.attempts}" in warnings(events)


def test_a_lock_timeout_that_lasts_gives_up_after_pve_locked_s_tries(pve: Any, pve_env: str, pve_cert: tuple,
                                                                      disk: Disk, events: Recorder,
                                                                      proxy: FaultProxy) -> None:
    proxy.add("POST", CREATE, LOCKED, times=FOREVER)
    with pytest.raises(PveError, match="got timeout") as err:
        proxmox.deploy(through(proxy, pve, pve_cert), disk.image, events.emitter)
    assert err.value.lock_timeout
    assert proxy.count("POST", CREATE) == PVE_LOCKED.attempts and pve.vms == {}


@pytest.mark.parametrize("answer", ["403 Permission check failed (/vms/100, VM.Allocate)",
                                    "500 storage 'local-lvm' does not exist", "503 Service Unavailable",
                                    "596 Connection timed out", "500 VM 100 is locked (create)"])
def test_a_write_pve_may_have_carried_out_or_refused_fails_at_once(
        answer: str, pve: Any, pve_env: str, pve_cert: tuple, disk: Disk, events: Recorder,
        proxy: FaultProxy) -> None:
    proxy.add("POST", CREATE, answer, times=FOREVER)
    with pytest.raises(PveError) as err:
        proxmox.deploy(through(proxy, pve, pve_cert), disk.image, events.emitter)
    assert err.value.status == int(answer[:3])
    assert proxy.count("POST", CREATE) == 1 and tries_logged(events) == 0 and pve.vms == {}


def test_a_request_that_never_left_is_sent_again_even_a_write(pve: Any, pve_env: str, pve_cert: tuple,
                                                               events: Recorder) -> None:
    with socket.socket() as s:  # a port nobody listens on: every connection is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = Pve(pve_target(pve, pve_cert[0], api_url=f"https://127.0.0.1:{port}"), events.emitter)
    with pytest.raises(PveConnectionError) as err:
        api.destroy(client, 100)  # DELETE
    assert err.value.sent is False and "not sent again" not in str(err.value)
    assert tries_logged(events) == PVE_LOCKED.attempts - 1
    with pytest.raises(PveConnectionError):
        client.call("list VMs", client.node.qemu.get)  # GET
    assert tries_logged(events) == PVE_LOCKED.attempts - 1 + PVE_READ.attempts - 1


def test_an_upload_refused_for_a_lock_timeout_is_sent_again_whole(pve: Any, pve_env: str, pve_cert: tuple,
                                                                   disk: Disk, events: Recorder,
                                                                   proxy: FaultProxy) -> None:
    proxy.add("POST", r"/upload$", CFS_LOCKED.replace("local-lvm", "local"))
    result = proxmox.deploy(through(proxy, pve, pve_cert), disk.image, events.emitter)
    assert proxy.count("POST", r"/upload$") == 2 and pve.count("POST", r"/upload$") == 1
    uploaded = Path(pve.files[result.resources["volume"]]["path"])
    assert hashlib.sha256(uploaded.read_bytes()).hexdigest() == disk.image.sha256  # from the first byte again


def test_delete_rides_out_lock_timeouts(pve: Any, pve_env: str, pve_cert: tuple, disk: Disk, events: Recorder,
                                        proxy: FaultProxy) -> None:
    target = through(proxy, pve, pve_cert)
    made = proxmox.deploy(target, disk.image, events.emitter)
    vm_lock = proxy.add("DELETE", DESTROY, LOCKED)
    storage_lock = proxy.add("DELETE", r"/storage/local/content/", "500 cfs-lock 'storage-local' error: got lock "
                                                                   "request timeout")
    removed = proxmox.delete(target, disk.image, events.emitter)
    assert removed == [f"vm/{made.resources['vmid']}", made.resources["volume"]]
    assert vm_lock.served == 1 and storage_lock.served == 1
    assert pve.count("DELETE", DESTROYED) == 1 and pve.count("DELETE", r"/storage/local/content/") == 1


@pytest.mark.parametrize("method,path,answer", [
    ("DELETE", DESTROY, "reset-after"),
    ("DELETE", DESTROY, "403 Permission check failed (/vms/100, VM.Allocate)"),
    ("DELETE", r"/storage/local/content/", "reset-after"),
    ("DELETE", r"/storage/local/content/", "500 volume is still in use")])
def test_a_delete_cut_off_or_refused_fails_at_once(method: str, path: str, answer: str, pve: Any, pve_env: str,
                                                   pve_cert: tuple, disk: Disk, events: Recorder,
                                                   proxy: FaultProxy) -> None:
    target = through(proxy, pve, pve_cert)
    proxmox.deploy(target, disk.image, events.emitter)
    proxy.add(method, path, answer, times=FOREVER)
    with pytest.raises((PveError, PveConnectionError)):
        proxmox.delete(target, disk.image, events.emitter)
    assert proxy.count(method, path) == 1 and tries_logged(events) == 0
    assert pve.count(method, DESTROYED if path == DESTROY else path) == (1 if answer == "reset-after" else 0)


# ---------------------------------------------------------------- task polls

@pytest.mark.parametrize("answer", ["reset", "595 No route to host", "503 Service Unavailable", LOCKED])
def test_a_task_poll_survives_lost_polls(answer: str, pve: Any, pve_env: str, pve_cert: tuple, disk: Disk,
                                         events: Recorder, proxy: FaultProxy) -> None:
    fault = proxy.add("GET", CREATE_POLL, answer, times=2)
    result = proxmox.deploy(through(proxy, pve, pve_cert), disk.image, events.emitter)
    assert result.created and fault.served == 2
    assert pve.vms[result.resources["vmid"]]["template"] == 1


def test_lost_polls_past_pve_task_poll_end_the_wait_and_the_vm_is_removed(
        pve: Any, pve_env: str, pve_cert: tuple, disk: Disk, events: Recorder, proxy: FaultProxy) -> None:
    proxy.add("GET", CREATE_POLL, "reset", times=FOREVER)
    with pytest.raises(PveConnectionError, match="task status of create VM 100"):
        proxmox.deploy(through(proxy, pve, pve_cert), disk.image, events.emitter)
    assert proxy.count("GET", CREATE_POLL) == PVE_TASK_POLL.attempts
    assert pve.vms == {}  # the half-made VM was destroyed


def test_poll_retries_stop_at_the_task_timeout(pve: Any, pve_env: str, pve_cert: tuple, disk: Disk,
                                               events: Recorder, proxy: FaultProxy,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # So many tries that only the task's own deadline can end them in time.
    monkeypatch.setattr(api, "PVE_TASK_POLL", replace(PVE_TASK_POLL, attempts=FOREVER, first_wait=0.02,
                                                      max_wait=0.02, deadline=60.0))
    proxy.add("GET", CREATE_POLL, "503 Service Unavailable", times=FOREVER)
    started = time.monotonic()
    with pytest.raises(PveError, match="503"):
        proxmox.deploy(through(proxy, pve, pve_cert, task_timeout=1.0), disk.image, events.emitter)
    assert time.monotonic() - started < 15  # not PVE_TASK_POLL's 60 s
    assert proxy.count("GET", CREATE_POLL) > 1


def test_a_permanent_poll_error_ends_the_wait_at_once(pve: Any, pve_env: str, pve_cert: tuple, disk: Disk,
                                                      events: Recorder, proxy: FaultProxy) -> None:
    proxy.add("GET", CREATE_POLL, "403 Permission check failed (/nodes/pve, Sys.Audit)", times=FOREVER)
    with pytest.raises(PveError, match="403"):
        proxmox.deploy(through(proxy, pve, pve_cert), disk.image, events.emitter)
    assert proxy.count("GET", CREATE_POLL) == 1


# ---------------------------------------------------------------- VMIDs

@pytest.mark.parametrize("answer", ["403 Permission check failed (/vms/9000, VM.Allocate)",
                                    "500 unable to get any free VMID in range [9000, 9100]"])
def test_vmid_min_fails_at_once_on_any_answer_but_already_exists(answer: str, pve: Any, pve_env: str,
                                                                 pve_cert: tuple, disk: Disk, events: Recorder,
                                                                 proxy: FaultProxy) -> None:
    proxy.add("GET", NEXTID_FROM, answer, times=FOREVER)
    with pytest.raises(PveError) as err:
        proxmox.deploy(through(proxy, pve, pve_cert, vmid_min=9000), disk.image, events.emitter)
    assert err.value.status == int(answer[:3]) and "no free VMID" not in str(err.value)
    assert proxy.count("GET", NEXTID_FROM) == 1


def test_vmid_min_skips_taken_ids_and_rides_out_a_transient_answer(pve: Any, pve_env: str, pve_cert: tuple,
                                                                   disk: Disk, events: Recorder,
                                                                   proxy: FaultProxy) -> None:
    pve.vms[9000] = {"name": "other"}  # PVE answers 400 "VM 9000 already exists": taken
    fault = proxy.add("GET", NEXTID_FROM + "9001", "503 Service Unavailable")
    result = proxmox.deploy(through(proxy, pve, pve_cert, vmid_min=9000), disk.image, events.emitter)
    assert result.resources["vmid"] == 9001 and fault.served == 1
    assert proxy.count("GET", NEXTID_FROM) == 3  # 9000 (taken), 9001 (503), 9001


# ---------------------------------------------------------------- cleanup after a failure

def test_a_failed_cleanup_does_not_hide_the_first_error(pve: Any, pve_env: str, pve_cert: tuple, disk: Disk,
                                                        events: Recorder, proxy: FaultProxy) -> None:
    pve.fail_tasks["qmcreate"] = "unable to create VM: lvcreate failed"
    proxy.add("DELETE", DESTROY, "403 Permission check failed (/vms/100, VM.Allocate)", times=FOREVER)
    with pytest.raises(DeployError) as err:
        proxmox.deploy(through(proxy, pve, pve_cert), disk.image, events.emitter)
    assert "lvcreate failed" in str(err.value) and not isinstance(err.value, PveError)
    assert proxy.count("DELETE", DESTROY) == 1
    assert "VM 100 was left behind" in warnings(events) and "403" in warnings(events)


# ---------------------------------------------------------------- the node shell (PVE before 8.4)

class NodeShellSetup:
    def __init__(self, pve: Any, tmp_path: Path, cuts: list[int] | None = None, after: int = 256 * KIB,
                 drops: int = 0):
        from tests.deploy.ssh_fake import FakeNodeShell

        pve.version = "8.3.5"
        (tmp_path / "keys").mkdir()
        self.node = FakeNodeShell(tmp_path / "node", pve, tmp_path / "keys")
        self.drop = DropProxy(self.node.port, after=after, drops=drops, cuts=cuts)
        known = tmp_path / "keys" / "known_hosts_proxy"
        known.write_text(f"[127.0.0.1]:{self.drop.port} ssh-rsa {self.node.host_key.get_base64()}\n")
        self.ssh = {"host": "127.0.0.1", "port": self.drop.port, "key_file": str(self.node.key_file),
                    "known_hosts": str(known)}
        self.root = tmp_path / "node"

    def stop(self) -> None:
        self.drop.stop()
        self.node.stop()


@pytest.fixture
def node_shell(pve: Any, tmp_path: Path) -> Iterator[Any]:
    made: list[NodeShellSetup] = []

    def make(**kw: Any) -> NodeShellSetup:
        made.append(NodeShellSetup(pve, tmp_path, **kw))
        return made[-1]
    yield make
    for setup in made:
        setup.stop()


def on_node(setup: NodeShellSetup, disk: Disk) -> Path:
    return setup.root / "var/tmp/pim" / upload_name(disk.image)


def test_an_sftp_upload_cut_off_reconnects_and_finishes(pve: Any, pve_env: str, pve_cert: tuple, disk: Disk,
                                                        events: Recorder, node_shell: Any) -> None:
    setup = node_shell(drops=1)
    result = proxmox.deploy(pve_target(pve, pve_cert[0], ssh=setup.ssh), disk.image, events.emitter)
    assert result.created and setup.drop.dropped == 1 and setup.drop.accepted == 2
    assert "SFTP upload interrupted" in warnings(events)
    assert hashlib.sha256(on_node(setup, disk).read_bytes()).hexdigest() == disk.image.sha256


def test_a_reconnect_that_fails_is_retried_within_the_bound(pve: Any, pve_env: str, pve_cert: tuple, disk: Disk,
                                                            events: Recorder, node_shell: Any) -> None:
    setup = node_shell(cuts=[256 * KIB, 0])  # cut mid-upload, then cut the reconnect at its first bytes
    result = proxmox.deploy(pve_target(pve, pve_cert[0], ssh=setup.ssh), disk.image, events.emitter)
    assert result.created and setup.drop.dropped == 2 and setup.drop.accepted == 3
    assert hashlib.sha256(on_node(setup, disk).read_bytes()).hexdigest() == disk.image.sha256


def test_an_sftp_upload_that_keeps_failing_gives_up_after_upload_retries(
        pve: Any, pve_env: str, pve_cert: tuple, disk: Disk, events: Recorder, node_shell: Any) -> None:
    setup = node_shell(drops=FOREVER)
    with pytest.raises(DeployError, match="SFTP upload of .* failed 2 time"):
        proxmox.deploy(pve_target(pve, pve_cert[0], ssh=setup.ssh, upload_retries=2), disk.image, events.emitter)
    assert setup.drop.accepted == 2 and pve.vms == {}


def test_an_unknown_host_key_fails_at_once(pve: Any, pve_env: str, pve_cert: tuple, disk: Disk,
                                           events: Recorder, node_shell: Any, tmp_path: Path) -> None:
    setup = node_shell()
    other = tmp_path / "keys" / "known_hosts_other"
    other.write_text(f"[127.0.0.1]:1 ssh-rsa {setup.node.host_key.get_base64()}\n")  # not this port's entry
    with pytest.raises(DeployError, match="known_hosts"):
        proxmox.deploy(pve_target(pve, pve_cert[0], ssh={**setup.ssh, "known_hosts": str(other)}), disk.image,
                       events.emitter)
    assert setup.drop.accepted == 1 and tries_logged(events) == 0


def test_a_failed_qm_importdisk_is_not_repeated_and_the_vm_is_removed(
        pve: Any, pve_env: str, pve_cert: tuple, disk: Disk, events: Recorder, node_shell: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.deploy import ssh_fake

    real_execute = ssh_fake.FakeNodeShell.execute

    def failing_qm(self: Any, channel: Any, command: str) -> None:
        if not command.startswith("qm "):
            return real_execute(self, channel, command)
        self.commands.append(command)
        channel.sendall(b"storage 'local-lvm' is full\n")
        channel.send_exit_status(255)
        channel.close()

    monkeypatch.setattr(ssh_fake.FakeNodeShell, "execute", failing_qm)
    setup = node_shell()
    with pytest.raises(DeployError, match="qm importdisk 100 failed with status 255"):
        proxmox.deploy(pve_target(pve, pve_cert[0], ssh=setup.ssh), disk.image, events.emitter)
    assert sum(c.startswith("qm importdisk") for c in setup.node.commands) == 1
    assert pve.vms == {}


class _FullDisk(io.RawIOBase):
    """A file on a full disk: every write fails with ENOSPC."""

    def writable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return offset

    def write(self, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("refusal", ["permission denied", "disk full"])
def test_a_refusal_by_the_node_fails_the_sftp_upload_at_once(refusal: str, pve: Any, pve_env: str, pve_cert: tuple,
                                                             disk: Disk, events: Recorder, node_shell: Any,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from paramiko.sftp import SFTP_PERMISSION_DENIED

    from tests.deploy import ssh_fake

    real_open = ssh_fake._Sftp.open

    def refusing_open(self: Any, path: str, flags: int, attr: Any) -> Any:
        if ".part-" not in path:
            return real_open(self, path, flags, attr)
        if refusal == "permission denied":
            return SFTP_PERMISSION_DENIED
        handle = real_open(self, path, flags, attr)
        handle.writefile = _FullDisk()  # the node's disk is full: each write answers SFTP "Failure"
        return handle

    monkeypatch.setattr(ssh_fake._Sftp, "open", refusing_open)
    setup = node_shell()
    # paramiko's pipelined put ignores the writes' answers: a full disk shows as a short file
    with pytest.raises(DeployError, match="SFTP upload of .* failed: (Permission denied|size mismatch in put)"):
        proxmox.deploy(pve_target(pve, pve_cert[0], ssh=setup.ssh), disk.image, events.emitter)
    assert setup.drop.accepted == 1 and tries_logged(events) == 0 and pve.vms == {}


def test_a_failed_cleanup_after_the_node_shell_import_does_not_hide_the_first_error(
        pve: Any, pve_env: str, pve_cert: tuple, disk: Disk, events: Recorder, node_shell: Any,
        proxy: FaultProxy) -> None:
    setup = node_shell()
    proxy.add("POST", r"/qemu/\d+/config$", "500 unable to parse volume ID 'x'", times=FOREVER)
    proxy.add("DELETE", DESTROY, "403 Permission check failed (/vms/100, VM.Allocate)", times=FOREVER)
    with pytest.raises(PveError, match="attach disk to 100") as err:
        proxmox.deploy(through(proxy, pve, pve_cert, ssh=setup.ssh), disk.image, events.emitter)
    assert err.value.status == 500 and proxy.count("POST", r"/qemu/\d+/config$") == 1  # a write: not repeated
    assert "VM 100 was left behind" in warnings(events)


def test_a_read_that_runs_into_the_request_timeout_still_gets_more_tries() -> None:
    """A policy's deadline counts the tries' own time; a hung request takes target.timeout,
    so the PVE client's policies leave room for two more tries after one."""
    from pim.engine.deploy.proxmox.api import Pve
    from pim.engine.retry import PVE_READ, PVE_TASK_POLL

    class Target:
        timeout = 60.0

    pve = Pve.__new__(Pve)
    pve.target = Target()  # type: ignore[assignment]
    for policy in (PVE_READ, PVE_TASK_POLL):
        patient = pve._patient(policy)
        assert patient.deadline is not None and patient.deadline >= policy.deadline + 2 * Target.timeout
        assert patient.attempts == policy.attempts
