"""SSH to a builder: a checked connection, a command whose lines stream back, and file
transfer (SFTP) that resumes and verifies.

Host keys are always checked, against the builder's `known_hosts` file (default
~/.ssh/known_hosts, as OpenSSH's `StrictHostKeyChecking yes`): an unknown or changed
key is an error that says how to trust the right one. Every failure to connect
names the builder and the fix. A connection the builder drops before the login (a
reset, EOF or timeout while reading sshd's banner, as sshd's MaxStartups does under
load) is tried again under `retry.BUILDER_CONNECT`; a refused login, a host key
problem, a refused or timed-out TCP connect fail at once. A fetch whose stream drops
reconnects and resumes under `retry.DOWNLOAD`.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from pim.engine.builders.spec import Builder
from pim.engine.errors import BuildError, InputError
from pim.engine.retry import BUILDER_CONNECT, DOWNLOAD, retrying

if TYPE_CHECKING:
    import paramiko

CONNECT_TIMEOUT = 10.0  # seconds for TCP connect, the SSH banner and authentication each
KEEPALIVE = 5  # seconds between SSH keepalives: a dead link is noticed
CHUNK = 1 << 20
SILENT = 30.0  # seconds without a byte from the builder before the link counts as dead


class BuilderUnreachable(BuildError):
    """The builder did not answer on its SSH address (down, wrong address, firewall)."""


class BuilderRefused(InputError):
    """The builder's sshd refused the login, or its host key is unknown or changed."""


class _LinkDropped(BuildError):
    """A fetch's stream stopped before its end (silence, a dropped connection, a channel
    closed without an exit status); `get` reconnects and resumes after it."""


def _transient_connect(e: Exception) -> bool:
    """Whether a failed connect may work a moment later: the builder took the TCP
    connection, then dropped it before the login (a reset, an EOF, a banner that did not
    come in time). A refused login, a host key problem, no common algorithm, a refused
    or timed-out TCP connect are final."""
    import paramiko

    if isinstance(e, (paramiko.AuthenticationException, paramiko.BadHostKeyException,
                      paramiko.ssh_exception.IncompatiblePeer, paramiko.ssh_exception.NoValidConnectionsError)):
        return False
    if isinstance(e, (EOFError, ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        return True
    return isinstance(e, paramiko.SSHException) and (
        str(e).startswith("Error reading SSH protocol banner") or str(e) == "Negotiation failed.")


class Connection:
    """An authenticated SSH session to `builder`; close it (or use `with`) when done.

    Raises BuilderUnreachable, or BuilderRefused for a refused key or an unknown or
    changed host key, each naming the builder and the fix.
    """

    def __init__(self, builder: Builder, timeout: float = CONNECT_TIMEOUT,
                 log: Callable[[str], None] | None = None):
        """Connect to `builder`: TCP connect, banner and login each bounded by `timeout`
        seconds; a builder that drops the connection before the login is tried again
        under retry.BUILDER_CONNECT (each retry reported through `log`)."""
        self.builder, self.timeout, self.log = builder, timeout, log
        self._sftp: "paramiko.SFTPClient | None" = None
        self.client = self._connect()

    def _connect(self) -> "paramiko.SSHClient":
        import paramiko

        builder, timeout = self.builder, self.timeout
        known = builder.known_hosts or Path.home() / ".ssh" / "known_hosts"
        key = str(builder.key_file) if builder.key_file else None
        if key is not None and not Path(key).is_file():
            raise BuilderRefused(f"builder {builder.name}: key_file {key} does not exist; fix key_file in builders:")
        where = f"builder {builder.name} ({builder.address})"
        target = f"[{builder.host}]:{builder.port}" if builder.port != 22 else str(builder.host)

        def attempt() -> paramiko.SSHClient:
            client = paramiko.SSHClient()
            if known.is_file():
                client.load_host_keys(str(known))
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            try:
                client.connect(builder.host or "", port=builder.port, username=builder.user, key_filename=key,
                               timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                               allow_agent=key is None, look_for_keys=key is None)
            except BaseException:
                client.close()
                raise
            return client

        try:
            client = retrying(BUILDER_CONNECT, attempt, transient=_transient_connect, what=f"connecting to {where}",
                              log=self.log)
        except paramiko.BadHostKeyException as e:
            raise BuilderRefused(
                f"{where}: its host key CHANGED ({e.key.get_name()} {e.key.fingerprint}; {known} has another): "
                f"someone may be intercepting the connection. If the builder was reinstalled, check the new "
                f"fingerprint with its admin, then `ssh-keygen -R '{target}' -f {known}` and trust it again") from None
        except paramiko.AuthenticationException:
            raise BuilderRefused(
                f"{where} refused the login as {builder.user or 'the current user'} with "
                f"{key or 'the agent and default keys'}: add its public key to ~/.ssh/authorized_keys of that "
                "user on the builder, or set key_file in builders:") from None
        except paramiko.SSHException as e:
            if "not found in known_hosts" in str(e):
                raise BuilderRefused(
                    f"{where}: its host key is not in {known}. Check the key's fingerprint with the builder's "
                    f"admin, then trust it: `ssh-keyscan -p {builder.port} {builder.host} >> {known}` (or "
                    f"connect once with `ssh -p {builder.port} {builder.user + '@' if builder.user else ''}"
                    f"{builder.host}`)") from None
            raise BuilderUnreachable(f"{where}: SSH failed ({e}{_tries(e)}); check that sshd runs there") from None
        except (OSError, EOFError) as e:
            if isinstance(e, EOFError):
                why = "it closed the connection before the login"
            elif isinstance(e, (socket.timeout, TimeoutError)):
                why = "timed out"
            else:
                why = e.strerror or str(e)
            raise BuilderUnreachable(f"{where} is unreachable ({why}{_tries(e)}); check that it is up, that sshd "
                                     f"listens on port {builder.port} and the uri in builders:") from None
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(KEEPALIVE)
        # paramiko's own rekey (every 2**29 bytes) can stall a channel that streams data in
        # ("Key-exchange timed out waiting for key negotiation", paramiko#822); OpenSSH's
        # server rekeys by itself (RekeyLimit, 1-4 GiB by cipher), which paramiko handles.
        transport.packetizer.REKEY_BYTES = transport.packetizer.REKEY_PACKETS = 1 << 40
        return client

    def reconnect(self) -> None:
        """Drop this session and connect again (as the constructor does, same errors)."""
        self.close()
        self._sftp = None
        self.client = self._connect()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
        self.client.close()

    @property
    def sftp(self) -> "paramiko.SFTPClient":
        """The session's SFTP client (opened on first use); BuildError when the builder's
        sshd offers no SFTP."""
        import paramiko

        if self._sftp is None:
            try:
                self._sftp = self.client.open_sftp()
            except paramiko.SSHException as e:
                raise BuildError(f"builder {self.builder.name}: its sshd refused SFTP ({e}); enable it there "
                                 "(`Subsystem sftp internal-sftp` in sshd_config)") from None
        return self._sftp

    def command(self, args: list[str]) -> str:
        """The builder's PIM command followed by `args`, as one shell line (the
        configured `pim` is taken as written: it may be `env X=1 /opt/pim/bin/pim`)."""
        return f"{self.builder.pim} {shlex.join(args)}"

    def open(self, args: list[str]) -> "paramiko.Channel":
        """Start the builder's PIM with `args`; its stdin, stdout and exit status are on
        the returned channel, its stderr merged into stdout (lines that are not the
        protocol's JSON are its log)."""
        transport = self.client.get_transport()
        assert transport is not None
        chan = transport.open_session(timeout=CONNECT_TIMEOUT)
        chan.set_combine_stderr(True)
        chan.exec_command(self.command(args))
        return chan

    def put(self, local: Path, remote: str, progress: Callable[[int], None] | None = None) -> None:
        """Upload `local` to `remote` (a path on the builder that is this upload's own).
        Raises BuildError when the link stays silent for SILENT seconds."""
        sftp = self.sftp
        sftp.get_channel().settimeout(SILENT)
        try:
            with open(local, "rb") as src, sftp.open(remote, "wb") as dst:
                dst.set_pipelined(True)
                while chunk := src.read(CHUNK):
                    dst.write(chunk)
                    if progress:
                        progress(len(chunk))
        except socket.timeout:
            raise BuildError(f"builder {self.builder.name}: no answer for {SILENT:.0f} s while uploading "
                             f"{local.name}; the link is down") from None
        except OSError as e:  # paramiko reports an SFTP status (disk full, permission) as IOError
            raise BuildError(f"builder {self.builder.name}: uploading {local.name} to {remote} failed "
                             f"({e.strerror or e}); free space or fix permissions there") from None

    def get(self, remote: str, local: Path, sha256: str, size: int, progress: Callable[[int], None] | None = None,
            mode: int = 0o644) -> None:
        """Download `remote` into `local`, continuing a partial `local` left by an
        interrupted download, and check the whole file's sha256 and size (bytes).

        The bytes come as a plain stream (`cat`, or `tail -c +N` to resume), which moves about 1.5
        times what SFTP's request/response blocks do over the same connection. When the
        stream drops (no byte for SILENT seconds, the connection lost, the channel closed
        without an exit status) the session reconnects and the download resumes from
        what `local` holds, under retry.DOWNLOAD; progress(n) counts each byte once.
        Raises BuildError (and removes `local`) when the bytes do not match; BuildError
        at once when the builder cannot read the file (a non-zero exit status) and for
        a local write that fails (naming the path); BuildError after the last try when
        the stream keeps dropping; BuilderUnreachable/BuilderRefused from a reconnect.
        """
        have = local.stat().st_size if local.exists() else 0
        if have > size:
            local.unlink()
            have = 0
        digest = hashlib.sha256()
        if have:
            with open(local, "rb") as f:
                for chunk in iter(lambda: f.read(CHUNK), b""):
                    digest.update(chunk)
            if progress:
                progress(have)
        tries = [0]

        def attempt() -> None:
            tries[0] += 1
            if tries[0] > 1:
                self.reconnect()  # a link that went silent may still look alive: never reuse it
            self._get_once(remote, local, digest, progress, mode)

        try:
            retrying(DOWNLOAD, attempt, transient=lambda e: isinstance(e, _LinkDropped),
                     what=f"builder {self.builder.name}: fetching {remote}", log=self.log)
        except _LinkDropped as e:
            raise BuildError(f"{e}{_tries(e)}") from None
        if local.stat().st_size != size or digest.hexdigest() != sha256:
            local.unlink(missing_ok=True)
            raise BuildError(f"builder {self.builder.name}: {remote} came back damaged (sha256 or size differs "
                             "from its manifest); it was discarded, run the build again")

    def _get_once(self, remote: str, local: Path, digest: "hashlib._Hash",
                  progress: Callable[[int], None] | None, mode: int) -> None:
        """One stream of `remote` from byte len(local) on, appended to `local` and `digest`.
        Raises _LinkDropped, or BuildError for a non-zero exit status or a write error."""
        import paramiko

        name = self.builder.name
        have = local.stat().st_size if local.exists() else 0
        link = (paramiko.SSHException, EOFError, OSError)

        def dropped(e: BaseException) -> _LinkDropped:
            return _LinkDropped(f"builder {name}: the connection dropped while fetching {remote} "
                                f"({str(e) or type(e).__name__}); run the build again: the download resumes")

        transport = self.client.get_transport()
        try:
            if transport is None or not transport.is_active():
                raise EOFError("the SSH connection is closed")
            chan = transport.open_session(timeout=CONNECT_TIMEOUT)
        except link as e:
            raise dropped(e) from None
        try:
            try:
                chan.settimeout(SILENT)
                # cat copies in larger blocks than tail; tail -c +N (POSIX) starts a resumed one at byte N
                quoted = shlex.quote(remote)
                chan.exec_command(f"tail -c +{have + 1} {quoted}" if have else f"cat {quoted}")
            except link as e:
                raise dropped(e) from None
            try:
                with open(local, "ab") as dst:
                    os.chmod(local, mode)
                    while True:
                        try:
                            chunk = chan.recv(CHUNK)
                        except socket.timeout:
                            raise _LinkDropped(f"builder {name}: no data for {SILENT:.0f} s while fetching {remote}; "
                                               "the link is down (run the build again: the download resumes)") from None
                        except link as e:
                            raise dropped(e) from None
                        if not chunk:
                            break
                        dst.write(chunk)
                        digest.update(chunk)
                        if progress:
                            progress(len(chunk))
            except OSError as e:  # the local file: reads raise _LinkDropped, not OSError
                raise BuildError(f"cannot write {local}: {e.strerror or e}; free space or fix the store's "
                                 "permissions, then run the build again") from None
            chan.status_event.wait(CONNECT_TIMEOUT)
            status = chan.exit_status if chan.status_event.is_set() else -1
        finally:
            try:
                chan.close()
            except link:  # the link is gone: nothing to close there
                pass
        if status == -1:  # paramiko's value for a channel closed without an exit status: the link went
            raise _LinkDropped(f"builder {name}: the stream of {remote} ended without an exit status (the "
                               "connection dropped); run the build again: the download resumes")
        if status != 0:
            raise BuildError(f"builder {name}: reading {remote} failed there (exit status {status}); "
                             "run the build again")


def lines(chan: "paramiko.Channel", heartbeat: Callable[[], None], every: float = 1.0,
          silent: float | None = None, who: str = "the builder") -> Iterator[bytes]:
    """The lines `chan` prints on stdout until it ends; `heartbeat()` is called at
    least every `every` seconds while waiting (the wait itself can be interrupted).
    Raises BuildError when nothing at all comes for `silent` seconds (a link that died
    without closing: the agent sends a line every few seconds while it works)."""
    chan.settimeout(every)
    buf, last, heard = b"", time.monotonic(), time.monotonic()
    while True:
        try:
            chunk = chan.recv(1 << 16)
        except socket.timeout:
            chunk = None
        now = time.monotonic()
        if now - last >= every or chunk is None:
            heartbeat()
            last = now
        if chunk is None:
            if silent is not None and now - heard > silent:
                raise BuildError(f"{who} sent nothing for {silent:.0f} s: the link is down; the builder stops "
                                 "its build when it notices")
            continue
        heard = now
        if not chunk:
            if buf:
                yield buf
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line


def _tries(e: BaseException) -> str:
    """"; gave up after N tries ..." from the retry helper's note on `e`, or ""."""
    notes = getattr(e, "__notes__", None)
    return f"; {notes[0]}" if notes else ""
