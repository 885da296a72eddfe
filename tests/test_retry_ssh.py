"""SSH: what is tried again and what fails at once.

Guest: an sshd that offers no algorithm paramiko accepts fails the wait at once, while
one that drops connections is waited for; a step, a capture or an upload is never
retried (a step whose connection drops is status -1). Builder: a real OpenSSH server on 127.0.0.1
(tests/sshd.py) behind a TCP proxy that resets connections: a connect reset before the
login is tried again under BUILDER_CONNECT, a refused login or a changed host key is
one attempt, and a fetch whose connection drops reconnects and resumes under DOWNLOAD.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from pim.engine import retry
from pim.engine.builders import ssh as builder_ssh
from pim.engine.builders.spec import Builder, BuilderSpec, resolve
from pim.engine.builders.ssh import BuilderRefused, BuilderUnreachable, Connection
from pim.engine.errors import BuildError, ProvisionError
from pim.engine.events import Emitter
from pim.engine.guest.ssh import KeyPair, Session
from tests import sshd
from tests.test_retry_downloads import MIB, CutProxy, quick


# ------------------------------------------------------------------ guest (G1)

def _name_list(text: str) -> bytes:
    return struct.pack(">I", len(text)) + text.encode()


def _kexinit(kex: str) -> bytes:
    """An SSH_MSG_KEXINIT packet (RFC 4253 section 7.1), unencrypted, offering `kex` only."""
    payload = bytes([20]) + os.urandom(16) + b"".join(_name_list(n) for n in [
        kex, "ssh-ed25519", "aes128-ctr", "aes128-ctr", "hmac-sha2-256", "hmac-sha2-256", "none", "none", "", ""])
    payload += b"\0" + b"\0\0\0\0"  # first_kex_packet_follows, reserved
    pad = 8 - (len(payload) + 5) % 8
    pad += 8 if pad < 4 else 0
    return struct.pack(">IB", len(payload) + pad + 1, pad) + payload + bytes(pad)


class TinyServer:
    """Accepts on 127.0.0.1 and runs `answer(conn)` for each connection; counts them."""

    def __init__(self, answer):
        self.accepted = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]

        def serve() -> None:
            while True:
                try:
                    conn, _ = self.sock.accept()
                except OSError:
                    return
                self.accepted += 1
                threading.Thread(target=self._run, args=(answer, conn), daemon=True).start()

        threading.Thread(target=serve, daemon=True).start()

    @staticmethod
    def _run(answer, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            answer(conn)

    def close(self) -> None:
        self.sock.close()


def _no_common_kex(conn: socket.socket) -> None:
    conn.sendall(b"SSH-2.0-OpenSSH_9.9 test\r\n" + _kexinit("nonesuch-kex@example.invalid"))
    conn.settimeout(10)
    while conn.recv(4096):
        pass


def test_a_guest_sshd_with_no_common_algorithm_fails_the_wait_at_once() -> None:
    server = TinyServer(_no_common_kex)
    session = Session(server.port, "pim", KeyPair.generate(), None, Emitter(), "provision")
    started = time.monotonic()
    try:
        with pytest.raises(ProvisionError, match=r"cannot agree with it on algorithms .*no acceptable kex.*"
                                                 r"KexAlgorithms"):
            session.wait(300, alive=lambda: True)
    finally:
        server.close()
    assert time.monotonic() - started < 10 and server.accepted == 1


def test_a_guest_port_that_drops_connections_is_still_waited_for() -> None:
    server = TinyServer(lambda conn: None)  # accepted, then closed: QEMU's forward before sshd listens
    session = Session(server.port, "pim", KeyPair.generate(), None, Emitter(), "provision")
    try:
        with pytest.raises(ProvisionError, match=r"within 3s \(last error: EOFError: .*closed before sshd's banner"):
            session.wait(3, alive=lambda: True)
    finally:
        server.close()
    assert server.accepted >= 2


# ------------------------------------------------------------------ builders (B1, B5)

@pytest.fixture(scope="module")
def host() -> Iterator[sshd.BuilderHost]:
    h = sshd.start()
    yield h
    h.stop()


def _via(host: sshd.BuilderHost, proxy: CutProxy, tmp_path: Path, **extra: object) -> Builder:
    """The builder `host`, reached through `proxy` (its known_hosts names the proxy's port)."""
    known = tmp_path / f"known_hosts_{proxy.port}"
    if not known.exists():
        kind, key = host.known_hosts.read_text().split()[1:3]
        known.write_text(f"[127.0.0.1]:{proxy.port} {kind} {key}\n")
    spec = {**host.builder(), "uri": f"ssh://{host.user}@127.0.0.1:{proxy.port}", "known_hosts": str(known),
            **extra}
    return resolve("t", BuilderSpec(**spec), {})


@pytest.fixture
def proxies() -> Iterator:
    made: list[CutProxy] = []

    def make(port: int, after: int, times: int = 1) -> CutProxy:
        made.append(CutProxy(port, after=after, times=times))
        return made[-1]

    yield make
    for p in made:
        p.close()


def test_a_builder_connection_reset_before_the_login_is_tried_again(host, proxies, tmp_path: Path) -> None:
    proxy = proxies(host.port, after=0, times=1)  # the first connection is reset at once
    lines: list[str] = []
    with Connection(_via(host, proxy, tmp_path), log=lines.append) as conn:
        assert conn.client.get_transport().is_active()
    assert proxy.accepted == 2 and len(lines) == 1 and "try 2 of 3" in lines[0], lines


def test_a_builder_that_keeps_resetting_is_unreachable_after_the_connect_policy(host, proxies, tmp_path: Path,
                                                                               monkeypatch) -> None:
    monkeypatch.setattr(builder_ssh, "BUILDER_CONNECT", quick(retry.BUILDER_CONNECT))
    proxy = proxies(host.port, after=0, times=99)
    with pytest.raises(BuilderUnreachable, match=r"builder t .*gave up after 3 tries"):
        Connection(_via(host, proxy, tmp_path))
    assert proxy.accepted == retry.BUILDER_CONNECT.attempts


@pytest.mark.parametrize("case", ["refused login", "changed host key"])
def test_a_refused_login_or_changed_host_key_is_one_attempt(host, proxies, tmp_path: Path, case: str) -> None:
    proxy = proxies(host.port, after=0, times=0)  # forwards everything
    extra: dict[str, object] = {}
    if case == "refused login":
        stranger = tmp_path / "stranger_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
        extra["key_file"] = str(stranger)
    else:
        other = tmp_path / "known_hosts_other"
        kind, key = (host.folder / "client_key.pub").read_text().split()[:2]  # a key, but not the host's
        other.write_text(f"[127.0.0.1]:{proxy.port} {kind} {key}\n")
        extra["known_hosts"] = str(other)
    with pytest.raises(BuilderRefused, match="refused the login" if case == "refused login" else "CHANGED"):
        Connection(_via(host, proxy, tmp_path, **extra))
    assert proxy.accepted == 1


def test_a_builder_port_that_refuses_the_connection_is_one_attempt(host, monkeypatch) -> None:
    import paramiko

    calls: list[int] = []
    real = paramiko.SSHClient.connect

    def counted(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(paramiko.SSHClient, "connect", counted)
    down = resolve("t", BuilderSpec(**{**host.builder(), "uri": f"ssh://{host.user}@127.0.0.1:{sshd.free_port()}"}),
                   {})
    with pytest.raises(BuilderUnreachable, match="is unreachable .*sshd listens on port"):
        Connection(down)
    assert calls == [1]


def _remote_blob(host: sshd.BuilderHost, name: str, size: int) -> tuple[Path, str]:
    path = host.home / name
    data = os.urandom(size)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def test_a_fetch_whose_connection_drops_reconnects_and_resumes(host, proxies, tmp_path: Path) -> None:
    remote, sha = _remote_blob(host, "artifact.bin", 5 * MIB)
    proxy = proxies(host.port, after=2 * MIB)  # the first connection dies 2 MiB into its answers
    lines: list[str] = []
    seen: list[int] = []
    local = tmp_path / "artifact.bin.part"
    with Connection(_via(host, proxy, tmp_path), log=lines.append) as conn:
        conn.get(str(remote), local, sha, 5 * MIB, seen.append)
    assert local.read_bytes() == remote.read_bytes()
    assert proxy.cuts_made == 1 and proxy.accepted == 2, "it reconnected once"
    # a fetch from the start would bring 5 MiB and SSH's framing back: it resumed (tail -c +N)
    assert proxy.received[1] < 5 * MIB, "the second connection fetched only the rest"
    assert sum(seen) == 5 * MIB, "each byte counted once"
    assert len(lines) == 1 and "try 2 of 5" in lines[0], lines


def test_a_fetch_that_keeps_dropping_is_a_build_error_and_keeps_the_partial_file(host, proxies, tmp_path: Path,
                                                                                  monkeypatch) -> None:
    monkeypatch.setattr(builder_ssh, "DOWNLOAD", quick(retry.DOWNLOAD))
    remote, sha = _remote_blob(host, "big.bin", 8 * MIB)
    proxy = proxies(host.port, after=1 * MIB, times=99)  # five tries of about 1 MiB do not finish it
    local = tmp_path / "big.bin.part"
    with Connection(_via(host, proxy, tmp_path)) as conn:
        with pytest.raises(BuildError, match=r"the download resumes.*gave up after 5 tries"):
            conn.get(str(remote), local, sha, 8 * MIB)
    assert proxy.accepted == retry.DOWNLOAD.attempts
    assert 0 < local.stat().st_size < 8 * MIB and remote.read_bytes().startswith(local.read_bytes())


def test_a_fetch_of_a_file_the_builder_cannot_read_fails_at_once(host, proxies, tmp_path: Path) -> None:
    proxy = proxies(host.port, after=0, times=0)
    with Connection(_via(host, proxy, tmp_path)) as conn:
        with pytest.raises(BuildError, match=r"reading .* failed there \(exit status 1\)"):
            conn.get(str(host.home / "nope"), tmp_path / "nope", "0" * 64, 10)
    assert proxy.accepted == 1, "not retried"


def test_an_upload_the_builder_cannot_write_fails_at_once(host, proxies, tmp_path: Path) -> None:
    local = tmp_path / "input.iso"
    local.write_bytes(os.urandom(1 << 16))
    proxy = proxies(host.port, after=0, times=0)
    with Connection(_via(host, proxy, tmp_path)) as conn:
        with pytest.raises(BuildError, match="uploading input.iso to .* failed .*free space or fix permissions"):
            conn.put(local, str(host.home / "no-such-folder" / "input.part"))
    assert proxy.accepted == 1, "not retried"


# ------------------------------------------------------------------ guest sessions (G3-G5), on the real sshd

@pytest.fixture
def guest(host) -> Iterator[Session]:
    """A provisioning Session logged in to the test sshd (standing in for a guest's) as its user."""
    key = KeyPair.generate()
    with open(host.home / ".ssh" / "authorized_keys", "a") as f:
        f.write(key.public_openssh + "\n")
    session = Session(host.port, host.user, key, None, Emitter(), "provision")
    session.wait(30, alive=lambda: True)
    yield session
    session.close()


def test_a_guest_step_whose_connection_drops_is_status_minus_one_not_retried(guest: Session) -> None:
    started = time.monotonic()
    status, _ = guest.run("drop", "kill -9 $PPID; sleep 30", check=False)  # kills its own sshd session
    assert status == -1 and time.monotonic() - started < 20
    assert not guest.connected, "the session is not reconnected behind the step's back"


def test_a_guest_step_that_fails_names_its_status_and_tail(guest: Session) -> None:
    with pytest.raises(ProvisionError, match="step: exited with status 3") as info:
        guest.run("step", "echo one; echo two; exit 3")
    assert info.value.tail[-2:] == ["one", "two"]


def test_capturing_a_guest_command_that_fails_is_a_provision_error_with_its_stderr(guest: Session) -> None:
    assert guest.capture("packages", "echo pkg-1.0") == "pkg-1.0\n"
    with pytest.raises(ProvisionError, match="packages: exited with status 4") as info:
        guest.capture("packages", "echo on-stdout; echo rpm-db-locked >&2; exit 4")
    assert info.value.tail == ["rpm-db-locked"]


def test_a_guest_upload_that_cannot_be_placed_fails_at_once(guest: Session, host, tmp_path: Path) -> None:
    data = os.urandom(3 << 20) + b"\n\x00end"
    guest.upload(data, str(host.home / "etc" / "blob"), 0o640)
    assert (host.home / "etc" / "blob").read_bytes() == data
    assert (host.home / "etc" / "blob").stat().st_mode & 0o777 == 0o640
    blocker = host.home / "file-not-folder"
    blocker.write_text("")
    with pytest.raises(ProvisionError, match="upload .*motd: exited with status 1"):  # mkdir -p under a file
        guest.upload(b"x", str(blocker / "motd"), 0o644)
    (host.home / "blocked").mkdir()
    (host.home / "blocked" / "inside").write_text("")
    with pytest.raises(ProvisionError, match="upload .*blocked: exited with status 1") as info:  # a folder
        guest.upload(b"x", str(host.home / "blocked"), 0o644)
    assert info.value.tail == [f"{host.home / 'blocked'} is a folder: name the file to write"]
    weird = host.home / 'a "quoted" $(touch pwned) `name`'
    guest.upload(b"odd\n", str(weird), 0o600)
    assert weird.read_bytes() == b"odd\n" and not (host.home / "pwned").exists()
    assert sorted(p.name for p in host.home.iterdir() if "pim-upload" in p.name) == [], "a failed upload leaves nothing"


def test_setting_a_resumed_guests_clock_that_fails_is_only_a_warning(guest: Session, host) -> None:
    """The clock is set by the next command, to now; a refusal is a warning event and
    the command runs. `date` is a stand-in on PATH here: the real one would set this
    host's clock when the tests run as root."""
    from pim.engine.pipeline.provision import _sync_clock

    seen: list[Any] = []
    guest.events = Emitter(seen.append)
    fake = host.home / "fake-bin"
    fake.mkdir()
    try:
        (fake / "date").write_text("#!/bin/sh\necho \"$@\" > \"$(dirname \"$0\")/asked\"; exit 1\n")
        (fake / "date").chmod(0o755)
        _sync_clock(guest)
        clock = guest.before_next
        assert clock is not None
        guest.before_next = lambda: f"PATH={fake}:$PATH; " + clock()
        status, tail = guest.run("step", "echo step ran", check=False)
        asked = (fake / "asked").read_text().split()
    finally:
        shutil.rmtree(fake)
    assert (status, tail) == (0, ["step ran"]), "the command ran after the refused clock, which left no output"
    assert asked[:2] == ["-u", "-s"] and abs(float(asked[2].lstrip("@")) - time.time()) < 30
    assert [(e.kind, e.message) for e in seen if e.kind == "warning"] == [
        ("warning", "could not set the resumed guest's clock")]
    status, tail = guest.run("next", "echo again", check=False)
    assert (status, tail) == (0, ["again"]) and len([e for e in seen if e.kind == "warning"]) == 1, "once only"


def test_a_script_is_sent_and_run_in_one_command_and_removed(guest: Session, tmp_path: Path) -> None:
    from pim.engine.guest.ssh import script_command

    path = f"/tmp/pim-test-script-{os.getpid()}"
    body = b"#!/bin/sh\necho \"$GREETING\"\nif read line; then echo \"read $line\"; else echo eof; fi\nexit 3\n"
    status, tail = guest.run("script", script_command(path, {"GREETING": "hello 'there'"}, len(body)), check=False,
                             stdin=body)
    assert (status, tail) == (3, ["hello 'there'", "eof"])
    assert not Path(path).exists(), "the script is removed after it ran"


def test_a_script_that_did_not_arrive_whole_is_not_run(guest: Session, host) -> None:
    """A dropped connection ends the script's input early without an error: the size
    it was sent with is checked first (here the size says 10 bytes more than sent)."""
    from pim.engine.guest.ssh import script_command

    marker = host.home / "ran"
    body = f"#!/bin/sh\ntouch {marker}\n".encode()
    path = f"/tmp/pim-test-short-{os.getpid()}"
    status, tail = guest.run("short", script_command(path, {}, len(body) + 10), check=False, stdin=body)
    assert status == 1 and tail == [f"received {len(body)} of {len(body) + 10} bytes for {path}"]
    assert not marker.exists() and not Path(path).exists()


def test_standard_input_waits_for_a_slow_guest_and_a_refusal_is_its_output(guest: Session) -> None:
    data = os.urandom(8 << 20)  # four windows of sshd's
    status, tail = guest.run("slow", "sleep 3; wc -c", stdin=data)
    assert (status, tail) == (0, [str(len(data))]), "the send waited for the guest to read"
    status, tail = guest.run("refuse", "echo refused >&2; exit 3", check=False, stdin=data)
    assert (status, tail) == (3, ["refused"]), "a command that reads nothing fails as itself"
