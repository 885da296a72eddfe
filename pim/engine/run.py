"""Every child process PIM starts goes through `start()` in this module.

`start()` finds the program on PATH (a missing one is a MissingTool error naming
the Debian package to install), logs argv with shlex.join, gives the child
/dev/null as stdin unless asked otherwise, and sets up the parent-death signal,
the one place that does. `run()` (a command to completion, output captured) and
`spawn_detached()` (a long-lived child in its own session, QEMU or qemu-nbd)
are built on it.

    run(["qemu-img", "info", "--output=json", path]).stdout   -> str
    proc = spawn_detached(argv, log_path)                      -> Popen[bytes]
    proc = start(argv, stdin=PIPE, stdout=PIPE, die_with_parent=signal.SIGTERM)
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
from typing import IO, Any, Union

from pim.engine import lifeline
from pim.engine.errors import CommandError, MissingTool
from pim.engine.platforms import tool_dirs

log = logging.getLogger("pim.run")

PIPE, DEVNULL, STDOUT = subprocess.PIPE, subprocess.DEVNULL, subprocess.STDOUT
_Stream = Union[int, IO[Any], None]

# The Debian package that ships each program PIM runs (`apt-get install <package>`).
DEBIAN_PACKAGES = {
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-system-aarch64": "qemu-system-arm",
    "qemu-img": "qemu-utils",
    "qemu-nbd": "qemu-utils",
    "xorriso": "xorriso",
    "isoinfo": "genisoimage",
    "setpriv": "util-linux",
    "debconf-set-selections": "debconf",
    "mkfs.ext4": "e2fsprogs",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "sshd": "openssh-server",
    "terraform": None,
}


def debian_package(tool: str) -> str | None:
    """The Debian package that installs `tool` (a name or a path), or None when unknown."""
    return DEBIAN_PACKAGES.get(os.path.basename(tool))


def find_tool(tool: str, env: dict[str, str] | None = None, platform: str | None = None) -> str:
    """The full path of `tool` on PATH (env's PATH when env is given), then in the
    platform's package-manager folders (macOS: Homebrew's and MacPorts', see
    `platforms.tool_dirs`).

    Raises MissingTool (an InputError: exit status 2) naming the package to install.
    """
    if os.sep in tool:
        if os.access(tool, os.X_OK) and os.path.isfile(tool):
            return tool
        raise MissingTool(tool, debian_package(tool), platform)
    path = os.pathsep.join([(env or os.environ).get("PATH", os.defpath), *tool_dirs(platform)])
    found = shutil.which(tool, path=path)
    if found is None:
        raise MissingTool(tool, debian_package(tool), platform)
    return found


# A child that must not outlive PIM gets a signal from the kernel when its parent
# dies (PR_SET_PDEATHSIG, kept across exec); where there is no such signal (macOS),
# or when PIM_PARENT_DEATH=lifeline, from the lifeline's watcher (lifeline.py).
# On Linux util-linux's setpriv sets it
# and execs the command, so no Python runs between fork and exec: in a process with
# other threads (the Terraform and Pulumi providers serve gRPC while they build) a
# preexec_fn can crash or hang the child. Without setpriv, a preexec_fn calls
# prctl, looked up here in the parent.
_PR_SET_PDEATHSIG = 1
_LINUX = sys.platform.startswith("linux")
_SETPRIV = shutil.which("setpriv") if _LINUX else None
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl if _LINUX else None
except (OSError, AttributeError):
    _prctl = None


def _with_parent_death(argv: list[str], sig: int | None) -> tuple[list[str], Any]:
    """(argv, preexec_fn) for a child that gets `sig` when this process dies."""
    if sig is None or not _LINUX:
        return argv, None
    if _SETPRIV:
        return [_SETPRIV, "--pdeathsig", signal.Signals(sig).name.removeprefix("SIG"), "--", *argv], None
    if _prctl is None:
        return argv, None
    prctl = _prctl
    return argv, lambda: prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def start(
    argv: list[str],
    *,
    stdin: _Stream = DEVNULL,
    stdout: _Stream = PIPE,
    stderr: _Stream = STDOUT,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    new_session: bool = False,
    die_with_parent: int | None = signal.SIGKILL,
) -> subprocess.Popen[bytes]:
    """Start argv and return the running child; the one place PIM starts a process.

    argv[0] is looked up on PATH (env's PATH when env is given): a missing program
    raises MissingTool naming its Debian package. stdin/stdout/stderr take what
    subprocess.Popen takes (default: /dev/null in, stdout and stderr on one pipe).
    new_session: the child leaves the terminal's process group, so Ctrl-C reaches
    only PIM, which then stops the child in order. die_with_parent: the signal the
    child gets when PIM dies, from the kernel (Linux) or the lifeline's watcher
    (elsewhere; see lifeline.py); None: the child may outlive PIM. The child's pid
    is the command's own (setpriv and the lifeline's launcher exec it).
    """
    program = find_tool(argv[0], env)
    log.debug("start: %s", shlex.join(argv))
    if die_with_parent is not None and lifeline.wanted():
        full, passed, kept = lifeline.wrap([program, *argv[1:]], die_with_parent)
        try:
            proc = subprocess.Popen(full, stdin=stdin, stdout=stdout, stderr=stderr, env=env, cwd=cwd,
                                    start_new_session=new_session, pass_fds=(passed,))
        except BaseException:
            os.close(kept)
            raise
        finally:
            os.close(passed)
        lifeline.hold(proc, kept)
        return proc
    full, preexec = _with_parent_death([program, *argv[1:]], die_with_parent)
    try:
        return subprocess.Popen(full, stdin=stdin, stdout=stdout, stderr=stderr, env=env, cwd=cwd,
                                start_new_session=new_session, preexec_fn=preexec)
    except FileNotFoundError:  # removed between the look-up and the exec
        raise MissingTool(argv[0], debian_package(argv[0])) from None


def run(
    argv: list[str],
    *,
    check: bool = True,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv to completion; stdout and stderr together, decoded, in `.stdout`.

    input: bytes for its stdin (else /dev/null). timeout: seconds, then the child
    is killed and subprocess.TimeoutExpired raised. The child is killed and reaped
    on any exception (Ctrl-C included) and when PIM dies. check: a non-zero exit
    raises CommandError with argv, status and the output's last lines.
    Raises MissingTool when argv[0] is not installed.
    """
    proc = start(argv, stdin=PIPE if input is not None else DEVNULL, env=env, cwd=cwd)
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


def spawn_detached(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start a long-lived child in its own session (nohup style, never -daemonize).

    The child ignores the terminal's Ctrl-C (PIM handles it and shuts the child
    down in order) but gets SIGKILL when PIM dies. stdout/stderr are appended to
    log_path. Raises MissingTool when argv[0] is not installed.
    """
    with open(log_path, "ab") as out:
        return start(argv, stdout=out, stderr=STDOUT, new_session=True)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie does not; one of another user does)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True
