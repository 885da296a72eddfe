"""pim.engine.wait.until: the one polling helper."""

from __future__ import annotations

import time

import pytest

from pim.engine.errors import BuildError, WaitAborted, WaitTimeout
from pim.engine.wait import until


def test_returns_the_first_truthy_value_and_treats_ignored_errors_as_not_yet() -> None:
    calls: list[float] = []

    def check() -> str | None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise ConnectionRefusedError("not listening yet")
        return "ready" if len(calls) == 3 else None

    assert until(check, what="the socket", timeout=5, interval=0.05, ignore=(ConnectionRefusedError,)) == "ready"
    assert len(calls) == 3 and calls[2] - calls[0] >= 0.1


def test_timeout_names_what_was_awaited_and_chains_the_last_error() -> None:
    def check() -> None:
        raise FileNotFoundError("no socket")

    t0 = time.monotonic()
    with pytest.raises(WaitTimeout, match=r"QEMU's QMP socket: not ready within 0.3 s") as caught:
        until(check, what="QEMU's QMP socket", timeout=0.3, interval=0.05, ignore=(FileNotFoundError,))
    assert 0.3 <= time.monotonic() - t0 < 1.0
    assert isinstance(caught.value, BuildError) and isinstance(caught.value.__cause__, FileNotFoundError)


def test_alive_false_aborts_at_once_and_other_errors_propagate() -> None:
    t0 = time.monotonic()
    with pytest.raises(WaitAborted, match="the guest agent"):
        until(lambda: False, what="the guest agent", timeout=30, interval=1.0, alive=lambda: False)
    assert time.monotonic() - t0 < 0.5
    with pytest.raises(ZeroDivisionError):
        until(lambda: 1 / 0, what="x", timeout=30, ignore=(OSError,))


def test_backoff_grows_the_interval_up_to_its_cap() -> None:
    stamps: list[float] = []
    with pytest.raises(WaitTimeout):
        until(lambda: stamps.append(time.monotonic()), what="x", timeout=1.0, interval=0.05, backoff=2.0,
              max_interval=0.2)
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert gaps[0] < 0.09 and gaps[1] >= 0.09 and max(gaps) < 0.3
