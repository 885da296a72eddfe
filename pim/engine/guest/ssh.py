"""SSH provisioning with paramiko: ephemeral build keys, waiting for sshd, scripts, uploads."""

from __future__ import annotations

import io
import logging
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
KNOCK = 0.1  # seconds between looks for sshd while the guest boots
KNOCK_PATIENCE = 1.0  # seconds a look waits for sshd's first bytes, at first
BANNER_TIMEOUT = 20.0  # seconds sshd may take to send them once it listens
SEND_TIMEOUT = 120.0  # seconds a command's standard input may wait for the guest to read on
WARNING = "pim-warning: "  # a line PIM's own guest commands print: a warning event, not output

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
        self.banner_at: float | None = None  # monotonic time sshd first answered (set by `wait`)
        # Called once, by the next `run`: a shell prefix for its command (a resumed guest's clock).
        self.before_next: Callable[[], str] | None = None

    def wait(self, timeout: float, alive: Callable[[], bool]) -> float:
        """Connect as soon as sshd answers, within `timeout` seconds; returns the seconds waited.

        Every KNOCK seconds a plain TCP connection looks for sshd's first bytes (peeked,
        not read); the SSH handshake then runs on that same connection, so sshd starts
        one session, not two. A refused connection, an EOF (QEMU's forward found nothing
        listening in the guest) or no answer within the knock's own deadline (the guest's
        network is not up; the deadline doubles while that lasts, up to 20 s) are "not
        yet". `banner_at` is the monotonic time sshd first answered. Raises
        ProvisionError when `alive()` turns false (the VM stopped), when the timeout
        passes (with the last connection error), and at once when sshd answers but
        refuses the build key (LoginRefused) or offers no key exchange, cipher, MAC or
        host key type paramiko accepts (paramiko's IncompatiblePeer): neither changes
        by waiting.
        """
        start = time.monotonic()
        patience = [KNOCK_PATIENCE]

        def connected() -> bool:
            sock = self._knock(patience)
            self.banner_at = self.banner_at or time.monotonic()
            try:
                self._connect(sock)
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
            until(connected, what=f"SSH on 127.0.0.1:{self.port}", timeout=timeout, interval=KNOCK, alive=alive,
                  ignore=(paramiko.SSHException, OSError, EOFError))
        except WaitAborted as e:
            raise ProvisionError(f"the VM stopped while waiting for SSH ({_last(e)})") from None
        except WaitTimeout as e:
            raise ProvisionError(f"SSH did not come up within {timeout:.0f}s (last error: {_last(e)})") from None
        return time.monotonic() - start

    def _knock(self, patience: list[float]) -> socket.socket:
        """A connection on which sshd has sent its first bytes.

        `patience[0]`: seconds to wait for them; a wait that runs out doubles it (up to
        BANNER_TIMEOUT) and raises socket.timeout, an EOF sets it back and raises
        EOFError. Raises OSError when the connection is refused.
        """
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=patience[0])
        try:
            sock.settimeout(patience[0])
            first = sock.recv(4, socket.MSG_PEEK)
        except socket.timeout:
            sock.close()
            patience[0] = min(2 * patience[0], BANNER_TIMEOUT)
            raise
        except BaseException:
            sock.close()
            raise
        if not first:
            sock.close()
            patience[0] = KNOCK_PATIENCE
            raise EOFError("the connection was closed before sshd's banner (nothing listens on port 22 yet)")
        return sock

    def _connect(self, sock: socket.socket | None = None) -> None:
        self.close()
        client = paramiko.SSHClient()
        # The guest's host key is new on every build and the connection never
        # leaves this machine's loopback, so there is nothing to pin.
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            client.connect(
                "127.0.0.1", port=self.port, username=self.user, pkey=self.key.pkey(),
                password=self.password, allow_agent=False, look_for_keys=False, sock=sock,
                timeout=10, banner_timeout=BANNER_TIMEOUT, auth_timeout=20,
            )
        except BaseException:
            client.close()
            if sock is not None:
                sock.close()
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

    def run(self, label: str, command: str, check: bool = True, stdin: bytes | None = None) -> tuple[int, list[str]]:
        """Run a command, streaming output as events, with `stdin` (then EOF) as its
        standard input when given, after `before_next`'s prefix if one is set. Returns
        (status, tail); -1 if the connection dropped."""
        assert self.client is not None
        transport = self.client.get_transport()
        assert transport is not None
        chan = transport.open_session()
        chan.set_combine_stderr(True)
        # Reads wake up every second, so a step that prints nothing for minutes (a
        # `sleep 600`) never holds the main thread in a wait that only data could end.
        chan.settimeout(POLL)
        if self.before_next is not None:
            command, self.before_next = self.before_next() + command, None
        chan.exec_command(self._sudo(command))
        if stdin is not None:
            # The guest may take a while to drain a full window (sudo starting under TCG):
            # the send gets its own deadline. A command that exits without reading it all
            # (it refused) closes the channel: its output and status say why, and a
            # receiver checks the size it got (`receive`).
            chan.settimeout(SEND_TIMEOUT)
            try:
                chan.sendall(stdin)
                chan.shutdown_write()
            except (OSError, EOFError):
                pass
            chan.settimeout(POLL)
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

    def run_script(self, label: str, path: str, body: bytes, env: dict[str, str], check: bool = True,
                   before: str = "") -> tuple[int, list[str]]:
        """Send `body` and run it as a program at `path` with `env` exported, in one
        command (`script_command`), after the shell text `before`; as `run`."""
        return self.run(label, before + script_command(path, env, len(body)), check=check, stdin=body)

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
        if line.startswith(WARNING):
            self.events.warning(self.stage, line[len(WARNING):])
            return
        tail.append(line)
        self.events.log(self.stage, f"[{label}] {line}", source="ssh")

    def upload(self, data: bytes, destination: str, mode: int) -> None:
        """Write data to destination with mode, owned by root (the command runs under
        sudo when the user is not root): one command that reads the data on its
        standard input into a file beside destination, checks its size and renames it
        into place, so a reader never sees half a file (one that fails leaves none).
        Raises ProvisionError when the command fails."""
        d, tmp = shlex.quote(destination), shlex.quote(f"{destination}.pim-upload")
        folder = shlex.quote(f"{destination} is a folder: name the file to write")
        self.run(f"upload {destination}",
                 f"if [ -d {d} ]; then echo {folder} >&2; exit 1; fi; "
                 f"mkdir -p \"$(dirname {d})\" && {receive(tmp, len(data))} && chmod {mode:o} {tmp} && mv -f {tmp} {d} "
                 f"|| {{ rc=$?; rm -f {tmp}; exit $rc; }}", stdin=data)


def receive(path: str, size: int) -> str:
    """The command that writes its standard input to `path` (shell-quoted) and fails,
    naming the shortfall, unless exactly `size` bytes arrived (a dropped connection
    ends the input early without an error)."""
    return (f"{{ cat > {path} && got=$(wc -c < {path}) && [ $got -eq {size} ] || "
            f"{{ echo \"received ${{got:-no}} of {size} bytes for \"{path}; rm -f {path}; false; }}; }}")


def script_command(path: str, env: dict[str, str], size: int) -> str:
    """The command that writes its standard input (`size` bytes) to `path`, runs it as
    a program with `env` exported, removes it and exits with its status: a script is
    sent and run in one command (Session.run's `stdin`). A script that did not arrive
    whole is not run. The script's own standard input is at its end."""
    exports = "".join(f"export {k}={shlex.quote(v)}; " for k, v in sorted(env.items()))
    return (f"{receive(path, size)} || exit 1; {exports}chmod +x {path} && {path} < /dev/null; "
            f"rc=$?; rm -f {path}; exit $rc")


def _last(e: BaseException) -> str:
    cause = e.__cause__
    return f"{type(cause).__name__}: {cause}" if cause is not None else "no attempt"
