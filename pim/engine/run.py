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
import signal
import subprocess
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


def _die_with_parent() -> None:
    # QEMU must not outlive PIM: the kernel sends SIGKILL when the parent dies.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: best effort only
        pass


def spawn_detached(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start a long-lived child in its own session (nohup style, never -daemonize).

    The child ignores the terminal's Ctrl-C (PIM handles it and shuts the child
    down in order) but dies with PIM. stdout/stderr go to log_path.
    """
    log.debug("spawn: %s", shlex.join(argv))
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if os.name == "posix" else None,
        )
