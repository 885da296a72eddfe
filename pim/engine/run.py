"""Every subprocess PIM starts goes through this module.

stdin is /dev/null unless input is given, argv is logged with shlex.join, the
child is killed if anything interrupts the wait, and failures raise CommandError
carrying argv, status and the output tail.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from pim.engine.errors import CommandError

log = logging.getLogger("pim.run")

_PR_SET_PDEATHSIG = 1


def run(
    argv: list[str],
    *,
    check: bool = True,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv to completion and return its captured (text) output."""
    log.debug("run: %s", shlex.join(argv))
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=cwd,
    )
    try:
        out, _ = proc.communicate(input=input, timeout=timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    text = out.decode(errors="replace")
    if check and proc.returncode != 0:
        raise CommandError(argv, proc.returncode, text)
    return subprocess.CompletedProcess(argv, proc.returncode, text, "")


# QEMU must not outlive PIM: the kernel sends SIGKILL to the child when its parent
# dies (PR_SET_PDEATHSIG, kept across exec). On Linux util-linux's setpriv sets it
# and execs the command, so no Python runs between fork and exec: in a process with
# other threads (the Terraform and Pulumi providers serve gRPC while they build) a
# preexec_fn can crash or hang the child. Without setpriv, the preexec_fn below,
# with prctl looked up here in the parent.
_SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: best effort only
    _prctl = None


def _die_with_parent() -> None:
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def with_parent_death(argv: list[str]) -> tuple[list[str], object]:
    """(argv, preexec_fn) for a child that dies with this process."""
    if _SETPRIV:
        return [_SETPRIV, "--pdeathsig", "KILL", "--", *argv], None
    return argv, _die_with_parent if os.name == "posix" else None


def spawn_detached(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start a long-lived child in its own session (nohup style, never -daemonize).

    The child ignores the terminal's Ctrl-C (PIM handles it and shuts the child
    down in order) but dies with PIM. stdout/stderr go to log_path.
    """
    log.debug("spawn: %s", shlex.join(argv))
    full, preexec = with_parent_death(argv)
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec,  # type: ignore[arg-type]
        )
