"""Waiting for a guest's sshd: a refused build key fails at once, a dead port times
out with the last error, a stopped VM aborts the wait. The server side is a real SSH
server (paramiko's transport in server mode) on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time

import paramiko
import pytest

from pim.engine.errors import LoginRefused, ProvisionError
from pim.engine.events import Emitter
from pim.engine.guest.ssh import KeyPair, Session


class _RefuseAll(paramiko.ServerInterface):
    def get_allowed_auths(self, username: str) -> str:
        return "publickey,password"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        return paramiko.AUTH_FAILED

    def check_auth_password(self, username: str, password: str) -> int:
        return paramiko.AUTH_FAILED


@pytest.fixture
def refusing_sshd():
    host_key = KeyPair.generate().pkey()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()
    transports: list[paramiko.Transport] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            t = paramiko.Transport(conn)
            t.add_server_key(host_key)
            t.start_server(server=_RefuseAll())
            transports.append(t)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    for t in transports:
        t.close()
    listener.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_refused_build_key_fails_at_once_and_says_what_to_do(refusing_sshd: int) -> None:
    session = Session(refusing_sshd, "pim", KeyPair.generate(), None, Emitter(), "provision")
    started = time.monotonic()
    with pytest.raises(LoginRefused, match=r"refused for user 'pim'.*ssh_public_key.*ssh.password"):
        session.wait(300, alive=lambda: True)
    assert time.monotonic() - started < 30


def test_a_closed_port_times_out_naming_the_last_error() -> None:
    session = Session(_free_port(), "pim", KeyPair.generate(), None, Emitter(), "provision")
    with pytest.raises(ProvisionError, match=r"within 3s \(last error: ConnectionRefusedError: .*Connection refused"):
        session.wait(3, alive=lambda: True)


def test_a_stopped_vm_ends_the_wait() -> None:
    session = Session(_free_port(), "pim", KeyPair.generate(), None, Emitter(), "provision")
    started = time.monotonic()
    with pytest.raises(ProvisionError, match="the VM stopped while waiting for SSH"):
        session.wait(300, alive=lambda: False)
    assert time.monotonic() - started < 5
