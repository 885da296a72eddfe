"""Retries of remote calls: one policy per kind of call, one place that says how much.

    from pim.engine.retry import PVE_READ, retrying

    items = retrying(PVE_READ, lambda: api.get(), transient=is_transient, what="list storage", log=log)

A remote call either fails for good (an answer that says no: 4xx, a refused key,
a checksum) or may work a moment later (a dropped connection, a timeout, a
throttle, a lock held by another task, an object the API has not yet made visible).
The caller decides which with `transient(exc)`; the policy decides how often and
how long. Waits are exponential with full jitter (AWS Architecture Blog,
"Exponential Backoff And Jitter", 2015): attempt n waits a random time in
[0, min(max_wait, first_wait * 2**(n-1))]. The table of every remote call and its
policy is docs/retries.md; tests/test_retry_docs.py keeps it in step with POLICIES.

Built on tenacity. Ctrl-C and other BaseExceptions are never retried.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Policy:
    """How often and how long one kind of remote call is tried.

    attempts: tries in all, the first included (>= 1). first_wait, max_wait:
    seconds; the wait before try n+1 is random in [0, min(max_wait,
    first_wait * 2**(n-1))]. deadline: seconds from the first try after which no
    new try starts (None: attempts alone bound it).
    """

    name: str
    attempts: int
    first_wait: float
    max_wait: float
    deadline: float | None = None  # no try starts later than this after the first

    def worst_case(self) -> float:
        """Seconds spent waiting between tries at most (the calls' own time not included)."""
        total = sum(min(self.max_wait, self.first_wait * 2 ** n) for n in range(self.attempts - 1))
        return min(total, self.deadline) if self.deadline is not None else total


# Every policy PIM uses; docs/retries.md names each with these figures.
PVE_READ = Policy("pve-read", attempts=6, first_wait=0.5, max_wait=8.0, deadline=60.0)
PVE_LOCKED = Policy("pve-locked", attempts=5, first_wait=2.0, max_wait=15.0, deadline=90.0)
PVE_TASK_POLL = Policy("pve-task-poll", attempts=8, first_wait=0.5, max_wait=10.0, deadline=60.0)
# Outside botocore's own 6 tries per request, whose waits add up to ~1.6 s and whose retry
# quota 8 block threads spend fast in an outage: a block is idempotent, so it is sent again.
EBS_BLOCK = Policy("ebs-block", attempts=8, first_wait=1.0, max_wait=16.0, deadline=180.0)
EC2_VISIBLE = Policy("ec2-eventual-consistency", attempts=10, first_wait=1.0, max_wait=10.0, deadline=90.0)
# A download that resumes where it broke: bounded by tries alone, since one try of a big
# image may take far longer than any deadline would allow.
DOWNLOAD = Policy("download-resume", attempts=5, first_wait=1.0, max_wait=30.0)
BUILDER_CONNECT = Policy("builder-connect", attempts=3, first_wait=1.0, max_wait=5.0, deadline=30.0)
# Keys a DeleteObjects answer lists as not deleted with SlowDown/InternalError-type codes
# (the request itself succeeded, so botocore does not retry them): only those keys are sent again.
S3_DELETE = Policy("s3-delete-keys", attempts=5, first_wait=1.0, max_wait=10.0, deadline=60.0)
# A whole upload to a PVE node started over after its connection broke (API upload or SFTP);
# attempts is the target's upload_retries (1-10). No deadline: one try of a big image takes long.
PVE_UPLOAD = Policy("pve-upload", attempts=3, first_wait=1.0, max_wait=10.0)

POLICIES = (PVE_READ, PVE_LOCKED, PVE_TASK_POLL, PVE_UPLOAD, EBS_BLOCK, EC2_VISIBLE, DOWNLOAD, BUILDER_CONNECT,
            S3_DELETE)


def retrying(
    policy: Policy,
    fn: Callable[[], T],
    *,
    transient: Callable[[Exception], bool],
    what: str,
    log: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Return fn(), trying again under `policy` while it raises an exception that
    `transient` calls transient.

    A permanent error is raised at once; when the tries or the deadline run out the
    last error is raised as it is, with a note naming the policy and the count
    (Python's exception notes: `e.__notes__`). Each retry is logged through `log`
    as "<what>: <error>; try 2 of 6 in 0.7 s". Raises whatever fn raises.
    """
    import tenacity

    started = time.monotonic()
    stop = tenacity.stop_after_attempt(policy.attempts)
    if policy.deadline is not None:
        stop = stop | tenacity.stop_before_delay(policy.deadline)

    def retry_on(exc: BaseException) -> bool:
        return isinstance(exc, Exception) and transient(exc)

    def before_sleep(state: tenacity.RetryCallState) -> None:
        if log is not None and state.outcome is not None and state.next_action is not None:
            log(f"{what}: {_brief(state.outcome.exception())}; try {state.attempt_number + 1} of "
                f"{policy.attempts} in {state.next_action.sleep:.1f} s")

    retryer = tenacity.Retrying(
        stop=stop,
        wait=tenacity.wait_random_exponential(multiplier=policy.first_wait, max=policy.max_wait),
        retry=tenacity.retry_if_exception(retry_on),
        before_sleep=before_sleep,
        sleep=sleep,
        reraise=True,
    )
    try:
        return retryer(fn)
    except Exception as e:
        tries = retryer.statistics.get("attempt_number", 1)
        if tries > 1:
            e.add_note(f"gave up after {tries} tries in {time.monotonic() - started:.1f} s "
                       f"(retry policy {policy.name})")
        raise


def _brief(exc: BaseException | None) -> str:
    text = str(exc) if exc is not None else ""
    return (text.splitlines() or [exc.__class__.__name__ if exc is not None else "error"])[0][:200]
