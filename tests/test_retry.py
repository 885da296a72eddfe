"""The shared retry helper: transient errors are retried within the policy's bound,
permanent ones and Ctrl-C are raised at once, and giving up says how often it tried."""

from __future__ import annotations

import pytest

from pim.engine.retry import POLICIES, Policy, retrying

QUICK = Policy("quick", attempts=4, first_wait=0.5, max_wait=2.0)


class Flaky:
    def __init__(self, failures: list[BaseException], result: str = "ok"):
        self.failures, self.result, self.calls = list(failures), result, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return self.result


def test_transient_errors_are_retried_with_growing_capped_waits_and_logged():
    waits, lines = [], []
    fn = Flaky([ConnectionResetError("reset"), TimeoutError("slow"), ConnectionResetError("again")])
    assert retrying(QUICK, fn, transient=lambda e: isinstance(e, OSError), what="GET /x",
                    log=lines.append, sleep=waits.append) == "ok"
    assert fn.calls == 4
    # full jitter: try n waits within [0, min(max_wait, first_wait * 2**(n-1))]
    assert [w <= cap for w, cap in zip(waits, [0.5, 1.0, 2.0])] == [True, True, True]
    assert lines[0].startswith("GET /x: reset; try 2 of 4 in ")
    assert lines[-1].startswith("GET /x: again; try 4 of 4 in ")


def test_a_permanent_error_is_raised_at_once_unchanged():
    fn = Flaky([PermissionError("403 forbidden")])
    with pytest.raises(PermissionError, match="403 forbidden") as info:
        retrying(QUICK, fn, transient=lambda e: isinstance(e, ConnectionError), what="x", sleep=lambda s: None)
    assert fn.calls == 1
    assert not getattr(info.value, "__notes__", None)


def test_running_out_of_tries_raises_the_last_error_with_a_note():
    fn = Flaky([ConnectionResetError(str(n)) for n in range(10)])
    with pytest.raises(ConnectionResetError) as info:
        retrying(QUICK, fn, transient=lambda e: True, what="x", sleep=lambda s: None)
    assert str(info.value) == "3"
    assert fn.calls == QUICK.attempts
    assert "gave up after 4 tries" in info.value.__notes__[0] and "quick" in info.value.__notes__[0]


def test_ctrl_c_is_never_retried_even_if_the_predicate_says_so():
    fn = Flaky([KeyboardInterrupt()])
    with pytest.raises(KeyboardInterrupt):
        retrying(QUICK, fn, transient=lambda e: True, what="x", sleep=lambda s: None)
    assert fn.calls == 1


def test_the_deadline_stops_retries_before_the_attempts_run_out(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("time.monotonic", lambda: clock[0])

    def advance(seconds: float) -> None:
        clock[0] += seconds

    flaky = Flaky([ConnectionResetError("x")] * 10)

    def slow_call() -> str:
        clock[0] += 10.0  # every try takes 10 s of the 25 s budget
        return flaky()

    with pytest.raises(ConnectionResetError):
        retrying(Policy("short", attempts=10, first_wait=1, max_wait=1, deadline=25), slow_call,
                 transient=lambda e: True, what="x", sleep=advance)
    assert flaky.calls == 3  # tries start near 0, 10 and 21 s; a fourth would start past 25 s


def test_every_policy_is_bounded():
    for policy in POLICIES:
        assert policy.attempts >= 1 and policy.first_wait > 0 and policy.max_wait >= policy.first_wait
        assert policy.worst_case() <= (policy.deadline or float("inf"))
        assert policy.worst_case() < 300, policy
    assert len({p.name for p in POLICIES}) == len(POLICIES)
