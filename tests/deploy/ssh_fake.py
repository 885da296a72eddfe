"""A PVE node's shell for the pre-8.4 fallback: a real SSH server (paramiko) on 127.0.0.1.

sshd is not among the project's packages, and `qm` exists only on PVE, so this
server speaks real SSH + SFTP (files land under `root`) and runs two commands:
`sha256sum PATH` and `qm importdisk VMID PATH STORAGE`, the latter applied to the
FakePve it serves (a new disk listed as unusedN, as qm does).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import socket
import threading
from pathlib import Path
from typing import Any

import paramiko
from paramiko.sftp import SFTP_NO_SUCH_FILE, SFTP_OK


class _Sftp(paramiko.SFTPServerInterface):
    def __init__(self, server: Any, root: Path, *args: Any, **kwargs: Any):
        super().__init__(server, *args, **kwargs)
        self.root = root

    def _local(self, path: str) -> str:
        return str(self.root / path.lstrip("/"))

    def _errno(self, e: OSError) -> int:
        return paramiko.SFTPServer.convert_errno(e.errno)

    def stat(self, path: str) -> Any:
        try:
            return paramiko.SFTPAttributes.from_stat(os.stat(self._local(path)))
        except OSError as e:
            return self._errno(e)

    lstat = stat

    def open(self, path: str, flags: int, attr: Any) -> Any:
        try:
            fd = os.open(self._local(path), flags | getattr(os, "O_BINARY", 0), 0o600)
            mode = "wb" if flags & os.O_WRONLY else "r+b" if flags & os.O_RDWR else "rb"
            f = os.fdopen(fd, mode)
        except OSError as e:
            return self._errno(e)
        handle = paramiko.SFTPHandle(flags)
        handle.filename = self._local(path)
        handle.readfile = f
        handle.writefile = f
        return handle

    def remove(self, path: str) -> int:
        try:
            os.remove(self._local(path))
        except OSError as e:
            return self._errno(e)
        return SFTP_OK

    def rename(self, old: str, new: str) -> int:
        try:
            os.rename(self._local(old), self._local(new))
        except OSError as e:
            return self._errno(e)
        return SFTP_OK

    posix_rename = rename

    def mkdir(self, path: str, attr: Any) -> int:
        try:
            os.mkdir(self._local(path))
        except OSError as e:
            return self._errno(e)
        return SFTP_OK

    def list_folder(self, path: str) -> Any:
        try:
            local = self._local(path)
            return [paramiko.SFTPAttributes.from_stat(os.stat(os.path.join(local, n)), n) for n in os.listdir(local)]
        except OSError:
            return SFTP_NO_SUCH_FILE


class _Iface(paramiko.ServerInterface):
    def __init__(self, node: "FakeNodeShell"):
        self.node = node

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: Any) -> int:
        ok = username == "root" and key.get_base64() == self.node.client_key.get_base64()
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: Any, command: bytes) -> bool:
        # Run only once the request's reply is on the wire (see _Transport): a command
        # that closes its channel before the reply makes the client see "Channel closed".
        channel.transport.pending.append((channel, command.decode()))
        return True


class _Transport(paramiko.Transport):
    """Starts queued exec commands after the next message (the exec reply) is sent."""

    def __init__(self, sock: Any, node: "FakeNodeShell"):
        super().__init__(sock)
        self.node = node
        self.pending: list[tuple[Any, str]] = []

    def _send_user_message(self, data: Any) -> None:
        super()._send_user_message(data)
        while self.pending:
            channel, command = self.pending.pop(0)
            threading.Thread(target=self.node.execute, args=(channel, command), daemon=True).start()


class FakeNodeShell:
    def __init__(self, root: Path, pve: Any, keydir: Path):
        self.root, self.pve = root, pve
        root.mkdir(parents=True, exist_ok=True)
        self.host_key = paramiko.RSAKey.generate(2048)
        self.client_key = paramiko.RSAKey.generate(2048)
        self.key_file = keydir / "id_rsa"
        self.client_key.write_private_key_file(str(self.key_file))
        self.commands: list[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.known_hosts = keydir / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} ssh-rsa {self.host_key.get_base64()}\n")
        self._stop = False
        self._transports: list[Any] = []
        threading.Thread(target=self._accept, daemon=True, name="ssh-fake").start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            t = _Transport(conn, self)
            t.add_server_key(self.host_key)
            t.set_subsystem_handler("sftp", paramiko.SFTPServer, _Sftp, self.root)
            self._transports.append(t)
            try:
                t.start_server(server=_Iface(self))
            except (paramiko.SSHException, EOFError, OSError):
                continue

    def execute(self, channel: Any, command: str) -> None:
        self.commands.append(command)
        argv = [a for a in shlex.split(command) if a != "2>&1"]
        status, out = 127, f"{argv[0]}: command not found\n"
        if argv[:1] == ["sha256sum"]:
            local = self.root / argv[1].lstrip("/")
            status, out = 0, f"{hashlib.sha256(local.read_bytes()).hexdigest()}  {argv[1]}\n"
        elif argv[:2] == ["qm", "importdisk"]:
            local = self.root / argv[3].lstrip("/")
            status, out = 0, self.pve.import_disk(int(argv[2]), local, argv[4])
        channel.sendall(out.encode())
        channel.send_exit_status(status)
        channel.close()

    def stop(self) -> None:
        self._stop = True
        self.sock.close()
        for t in self._transports:
            t.close()
