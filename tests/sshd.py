"""A real OpenSSH server on 127.0.0.1 as a remote builder for tests and benchmarks.

The builder side logs in as the current user (the test's Python may live under a
home no other user can enter, e.g. pyenv under /root), with a home of its own in
/tmp: its HOME, PIM cache, config and runtime folder (XDG_RUNTIME_DIR) are set by
the builder's `pim` command, as a builder's admin would. sshd runs with its own
config, host key and port, and accepts only the client key made here; the client's
known_hosts holds the host key. Nothing listens beyond loopback.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pim.engine.pipeline.context import free_port

SSHD = "/usr/sbin/sshd"
VENV_PIM = Path(sys.executable).with_name("pim")


@dataclass
class BuilderHost:
    """One running sshd and the builder account behind it."""

    port: int
    user: str
    home: Path
    client_key: Path
    known_hosts: Path
    proc: subprocess.Popen
    folder: Path

    @property
    def cache(self) -> Path:
        return self.home / "cache"

    @property
    def runtime(self) -> Path:
        return self.home / "run"

    @property
    def pim_command(self) -> str:
        """The builder's `pim`: a wrapper in its home that sets its own HOME, store,
        config and runtime folder (a program's path, as a project's pim.yaml may name)."""
        return str(self.home / "bin" / "pim")

    def builder(self, name: str = "remote", **extra: object) -> dict[str, object]:
        """The builders: entry for this host (a pim.yaml mapping)."""
        return {"uri": f"ssh://{self.user}@127.0.0.1:{self.port}", "key_file": str(self.client_key),
                "known_hosts": str(self.known_hosts), "systems": {"x86_64": "kvm"}, "pim": self.pim_command,
                **extra}

    def processes(self, pattern: str) -> list[str]:
        """Command lines of this builder's processes (HOME is its home) that match the
        regular expression `pattern`."""
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                environ = (proc / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"HOME={self.home}".encode() in environ and re.search(pattern, cmdline):
                found.append(f"{proc.name} {cmdline}")
        return found

    def leftovers(self) -> list[str]:
        """What a stopped build must not leave: runtime files, scratch folders, half objects."""
        found = [str(p) for p in (self.runtime / "pim").glob("*") if not p.name.startswith("accel")] \
            if (self.runtime / "pim").is_dir() else []
        for sub in ("tmp", "nursery"):
            d = self.cache / sub
            if d.is_dir():
                found += [str(p) for p in d.iterdir()]
        found += [f"QEMU: {p}" for p in self.processes("qemu-system")]
        return found

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for line in self.processes("qemu-system"):
            with contextlib.suppress(OSError):
                os.kill(int(line.split()[0]), signal.SIGKILL)
        shutil.rmtree(self.folder, ignore_errors=True)
        shutil.rmtree(self.home, ignore_errors=True)


def _account() -> tuple[str, Path]:
    """(user, fresh home) for the builder side."""
    return pwd.getpwuid(os.getuid()).pw_name, Path(tempfile.mkdtemp(prefix="pim-builder-home-"))


def start() -> BuilderHost:
    """Start sshd on a free loopback port; fails with the reason if it does not come up."""
    if not Path(SSHD).exists():
        raise RuntimeError(f"{SSHD} is missing: `make test` installs openssh-server")
    folder = Path(tempfile.mkdtemp(prefix="pim-sshd-"))
    user, home = _account()
    for sub in ("run", "cache", "config", ".ssh", "bin"):
        (home / sub).mkdir(mode=0o700, exist_ok=True)
    wrapper = home / "bin" / "pim"
    wrapper.write_text(f"#!/bin/sh\nexport HOME={home} XDG_RUNTIME_DIR={home}/run XDG_CONFIG_HOME={home}/config "
                       f"PIM_CACHE_DIR={home}/cache\nexec {VENV_PIM} \"$@\"\n")
    wrapper.chmod(0o755)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / "host_key")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / "client_key")], check=True)
    shutil.copy(folder / "client_key.pub", home / ".ssh" / "authorized_keys")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder
    port = free_port()
    host_pub = (folder / "host_key.pub").read_text().split()
    (folder / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    (folder / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder / 'host_key'}\nPidFile {folder / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {home / '.ssh' / 'authorized_keys'}\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
        f"AllowUsers {user}\nLogLevel VERBOSE\nMaxStartups 50\nMaxSessions 50\n"
        "Subsystem sftp internal-sftp\n")
    log = open(folder / "sshd.log", "wb")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(folder / "sshd_config")], stdout=log, stderr=log,
                            start_new_session=True)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd ended at start: {(folder / 'sshd.log').read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("sshd did not listen within 15 s")
    return BuilderHost(port, user, home, folder / "client_key", folder / "known_hosts", proc, folder)
