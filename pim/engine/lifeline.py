"""A child that must not outlive PIM, on any POSIX host: the lifeline mechanism.

Linux has a parent-death signal (PR_SET_PDEATHSIG); macOS and the BSDs have none, and
polling from the child is impossible when the child is QEMU. The lifeline works
everywhere with two pipes and no polling:

  * PIM keeps the only write end of pipe A (non-inheritable, so no other child of PIM
    holds it) and starts `python -c LAUNCHER A SIGNAL -- argv`.
  * The launcher makes pipe B, forks a watcher, and then execs argv itself, so the
    program keeps the pid PIM started (Popen, QEMU's -pidfile and the runtime files
    agree). The program inherits B's write end; the watcher keeps A's and B's read ends.
  * The kernel closes A's write end when PIM exits, however it dies (SIGKILL
    included), and B's when the program exits. The watcher waits for either. It is the
    program's child, so its parent pid says whether the program still runs (a child is
    re-parented the moment its parent exits, before the pid can be reaped and reused):
    when A ends and the program still runs, PIM is gone and the program gets SIGNAL;
    when the program is gone, the watcher leaves. B only wakes it up: a child of the
    program may hold B open longer, and a program that closes inherited descriptors
    (OpenSSH does) closes it early; neither fools the parent-pid test.
  * The watcher leaves PIM's process group (a Ctrl-C for PIM must not end it) and the
    program gets SIGPIPE and SIGXFSZ back to their defaults (Python ignores both, and
    an ignored signal survives exec).

`PIM_PARENT_DEATH=lifeline` makes Linux use it too (the default there is the kernel's
signal), which is how it is tested on Linux.
"""

from __future__ import annotations

import os
import sys
import weakref
from typing import Any

from pim.engine.platforms import LINUX, platform_name

# Runs as `python -I -S -c LAUNCHER <A's read end> <signal number> <program> <args...>`:
# no site, no environment, standard library only, so it starts in ~20 ms.
LAUNCHER = r"""
import os, select, signal, sys
a, sig, argv = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
b_read, b_write = os.pipe()
program = os.getpid()
if os.fork() == 0:
    os.setsid()
    os.close(b_write)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    watched, closed_at = [os.dup(a), b_read], None  # dup: a low number, which select takes
    while os.getppid() == program:
        # Once B has closed, the program is exiting (its files close before its children
        # are re-parented) or it closed B itself: look at the parent pid for 2 s.
        wait = None if closed_at is None else (0.01 if os.times().elapsed - closed_at < 2 else None)
        ready = select.select(watched, [], [], wait)[0]
        if watched[0] in ready:
            if os.getppid() == program:
                try:
                    os.kill(program, sig)
                except OSError:
                    pass
            break
        if b_read in ready:
            watched.remove(b_read)
            closed_at = os.times().elapsed
    os._exit(0)
os.close(a)
os.close(b_read)
os.set_inheritable(b_write, True)
for s in (signal.SIGPIPE, signal.SIGXFSZ):
    signal.signal(s, signal.SIG_DFL)
try:
    os.execv(argv[0], argv)
except OSError as e:
    sys.stderr.write(f"{argv[0]}: {e.strerror}\n")
    os._exit(127)
"""


def wanted(platform: str | None = None) -> bool:
    """Whether children get the lifeline rather than the kernel's parent-death signal:
    on every platform but Linux, and on Linux when PIM_PARENT_DEATH=lifeline."""
    if os.environ.get("PIM_PARENT_DEATH") == "lifeline":
        return True
    return platform_name(platform) != LINUX


def wrap(argv: list[str], sig: int) -> tuple[list[str], int, int]:
    """(launcher argv, fd to pass to the child, fd PIM keeps) for `argv` (argv[0] a full
    path) to get signal `sig` when PIM is gone. Pass the first fd in Popen's pass_fds
    and close it after the start; hand the second to `hold`."""
    read_end, write_end = os.pipe()  # both non-inheritable (PEP 446)
    return [sys.executable, "-I", "-S", "-c", LAUNCHER, str(read_end), str(int(sig)), *argv], read_end, write_end


def hold(proc: Any, write_end: int) -> None:
    """Keep the lifeline's write end as long as `proc` (a Popen) lives: it is closed when
    the Popen is collected, which happens only once the program has been reaped (Popen
    keeps a running child's object alive), or when PIM exits."""
    proc.pim_lifeline = write_end
    weakref.finalize(proc, os.close, write_end)
