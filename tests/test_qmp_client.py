"""The QMP client against a real QEMU monitor: every call ends in bounded time, and an
interrupted call frees the monitor (QEMU serves one QMP client at a time)."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from types import FrameType
from typing import Iterator

import pytest

from pim.engine.errors import VMError
from pim.engine.qemu.qmp import QMP


@pytest.fixture
def interrupt_in() -> Iterator[object]:
    """interrupt_in(seconds): a KeyboardInterrupt raised in the main thread after that long,
    as Ctrl-C raises it through PIM's signal handler."""
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, handler)
    yield lambda seconds: signal.setitimer(signal.ITIMER_REAL, seconds)
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def test_commands_get_their_answers_and_close_is_idempotent(stopped_qemu: Path) -> None:
    mon = QMP(stopped_qemu)
    assert mon.status() == "prelaunch"
    with pytest.raises(VMError, match="QMP no-such-command failed"):
        mon.cmd("no-such-command")
    assert mon.status() == "prelaunch"  # an error answer leaves the connection usable
    mon.close()
    mon.close()


def test_a_connect_the_monitor_does_not_greet_ends_at_the_timeout(stopped_qemu: Path) -> None:
    holder = QMP(stopped_qemu)  # the monitor's one client: a second one is not greeted
    try:
        started = time.monotonic()
        with pytest.raises(VMError, match=r"cannot connect to QMP .*no answer within 1s"):
            QMP(stopped_qemu, timeout=1.0)
        assert time.monotonic() - started < 5
    finally:
        holder.close()
    again = QMP(stopped_qemu, timeout=5.0)  # the timed-out client left nothing queued
    assert again.status() == "prelaunch"
    again.close()


def test_an_interrupted_connect_closes_its_socket(stopped_qemu: Path, interrupt_in) -> None:  # type: ignore[no-untyped-def]
    holder = QMP(stopped_qemu)
    interrupt_in(0.3)
    with pytest.raises(KeyboardInterrupt):
        QMP(stopped_qemu, timeout=60.0)  # waits for a greeting that only comes once holder leaves
    holder.close()
    # Had the interrupted client kept its socket, QEMU would greet it next and this one would wait.
    after = QMP(stopped_qemu, timeout=5.0)
    assert after.status() == "prelaunch"
    after.close()
