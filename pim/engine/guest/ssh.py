"""SSH provisioning with paramiko: ephemeral build keys, waiting for sshd, scripts, uploads."""

from __future__ import annotations

import io
import logging
import posixpath
import shlex
import socket
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import paramiko

from pim.engine.errors import LoginRefused, ProvisionError, WaitAborted, WaitTimeout
from pim.engine.events import Emitter
from pim.engine.wait import until

TAIL_LINES = 40
POLL = 1.0  # seconds a channel read waits before the loop looks again

# Connecting while sshd is still starting fails many times by design; paramiko
# would print each failure's traceback. We report the last error ourselves.
logging.getLogger("paramiko").setLevel(logging.CRITICAL)


@dataclass(frozen=True)
class KeyPair:
    private_openssh: str  # secret: never logged, never in a manifest
    public_openssh: str

    @classmethod
    def generate(cls, comment: str = "pim-build") -> "KeyPair":
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ).decode()
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        return cls(private, f"{public.decode()} {comment}")

    def pkey(self) -> paramiko.PKey:
        return paramiko.Ed25519Key.from_private_key(io.StringIO(self.private_openssh))


class Session:
    """An SSH connection to the guest being provisioned."""

    def __init__(self, port: int, user: str, key: KeyPair, password: str | None, events: Emitter, stage: str):
        self.port, self.user, self.key, self.password = port, user, key, password
        self.events, self.stage = events, stage
        self.client: paramiko.SSHClient | None = None

    def wait(self, timeout: float, alive: Callable[[], bool]) -> float:
        """Connect, retrying every 2 s until `timeout` seconds; returns the seconds waited.

        A refused connection, a reset, an EOF or timeout while reading the banner are
        "not yet" (sshd is still starting). Raises ProvisionError when `alive()` turns
        false (the VM stopped), when the timeout passes (with the last connection
        error), and at once when sshd answers but refuses the build key (LoginRefused)
        or offers no key exchange, cipher, MAC or host key type paramiko accepts
        (paramiko's IncompatiblePeer): neither changes by waiting.
        """
        start = time.monotonic()

        def connected() -> bool:
            try:
                self._connect()
            except paramiko.AuthenticationException as e:
                how = "the build key and ssh.password were" if self.password else "the build key was"
                raise LoginRefused(
                    f"sshd in the guest is up but {how} refused for user {self.user!r} ({e}): the answer file "
                    "must authorize {{ ssh_public_key }} for ssh.user (or set ssh.password)") from None
            except paramiko.ssh_exception.IncompatiblePeer as e:
                raise ProvisionError(
                    f"sshd in the guest (127.0.0.1:{self.port}) answered, but PIM's SSH client (paramiko "
                    f"{paramiko.__version__}) cannot agree with it on algorithms ({e}): the guest's sshd_config "
                    "(KexAlgorithms, Ciphers, MACs, HostKeyAlgorithms) or crypto policy must allow one that "
                    "paramiko supports, such as curve25519-sha256, aes256-ctr, hmac-sha2-256, ssh-ed25519") from None
            return True

        try:
            until(connected, what=f"SSH on 127.0.0.1:{self.port}", timeout=timeout, interval=2.0, alive=alive,
                  ignore=(paramiko.SSHException, OSError, EOFError))
        except WaitAborted as e:
            raise ProvisionError(f"the VM stopped while waiting for SSH ({_last(e)})") from None
        except WaitTimeout as e:
            raise ProvisionError(f"SSH did not come up within {timeout:.0f}s (last error: {_last(e)})") from None
        return time.monotonic() - start

    def _connect(self) -> None:
        self.close()
        client = paramiko.SSHClient()
        # The guest's host key is new on every build and the connection never
        # leaves this machine's loopback, so there is nothing to pin.
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            client.connect(
                "127.0.0.1", port=self.port, username=self.user, pkey=self.key.pkey(),
                password=self.password, allow_agent=False, look_for_keys=False,
                timeout=10, banner_timeout=20, auth_timeout=20,
            )
        except BaseException:
            client.close()
            raise
        self.client = client

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    @property
    def connected(self) -> bool:
        t = self.client.get_transport() if self.client else None
        return bool(t and t.is_active())

    def _sudo(self, command: str) -> str:
        return command if self.user == "root" else f"sudo -n sh -c {shlex.quote(command)}"

    def run(self, label: str, command: str, check: bool = True) -> tuple[int, list[str]]:
        """Run a command, streaming output as events. Returns (status, tail); -1 if the connection dropped."""
        assert self.client is not None
        transport = self.client.get_transport()
        assert transport is not None
        chan = transport.open_session()
        chan.set_combine_stderr(True)
        # Reads wake up every second, so a step that prints nothing for minutes (a
        # `sleep 600`) never holds the main thread in a wait that only data could end.
        chan.settimeout(POLL)
        chan.exec_command(self._sudo(command))
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        buf = b""
        while True:
            try:
                data = chan.recv(65536)
            except socket.timeout:
                continue
            if not data:
                break
            buf += data
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                self._emit(label, raw, tail)
        if buf:
            self._emit(label, buf, tail)
        status = chan.recv_exit_status() if transport.is_active() else -1
        chan.close()
        if check and status != 0:
            raise ProvisionError(f"{label}: exited with status {status}", list(tail))
        return status, list(tail)

    def capture(self, label: str, command: str) -> str:
        """Run a command and return its standard output as text, emitting nothing of it
        (for output that is data, not progress). Raises ProvisionError with the tail of
        its standard error when it exits non-zero or the connection drops."""
        assert self.client is not None
        _, stdout, stderr = self.client.exec_command(self._sudo(command), timeout=300)
        out = stdout.read().decode(errors="replace")
        err = stderr.read().decode(errors="replace")
        status = stdout.channel.recv_exit_status()
        if status != 0:
            raise ProvisionError(f"{label}: exited with status {status}", err.splitlines()[-TAIL_LINES:])
        return out

    def _emit(self, label: str, raw: bytes, tail: deque[str]) -> None:
        line = raw.decode(errors="replace").rstrip("\r")
        tail.append(line)
        self.events.log(self.stage, f"[{label}] {line}", source="ssh")

    def upload(self, data: bytes, destination: str, mode: int) -> None:
        """Write data to destination (as root via a temp file when the user is not root)."""
        assert self.client is not None
        with self.client.open_sftp() as sftp:
            tmp = f"/tmp/.pim-upload-{posixpath.basename(destination)}"
            with sftp.open(tmp, "wb") as f:
                f.write(data)
            sftp.chmod(tmp, mode)
        d = shlex.quote(destination)
        self.run(f"upload {destination}", f"mkdir -p \"$(dirname {d})\" && mv -f {tmp} {d} && chmod {mode:o} {d}")


def script_command(path: str, env: dict[str, str]) -> str:
    exports = "".join(f"export {k}={shlex.quote(v)}; " for k, v in sorted(env.items()))
    return f"{exports}chmod +x {path} && {path}; rc=$?; rm -f {path}; exit $rc"


def _last(e: BaseException) -> str:
    cause = e.__cause__
    return f"{type(cause).__name__}: {cause}" if cause is not None else "no attempt"
