"""One way to wait for something: poll a check until it holds, with a deadline.

    from pim.engine.wait import until

    sock = until(lambda: connect(path), what="QEMU's QMP socket", timeout=15, interval=0.05,
                 ignore=(ConnectionRefusedError, FileNotFoundError), alive=lambda: proc.poll() is None)

`check()` is called at once, then every `interval` seconds (growing by `backoff`
up to `max_interval`) until it returns something truthy, which `until` returns.
Exceptions of the types in `ignore` count as "not yet"; any other propagates at
once. When `alive()` returns False the wait ends early with WaitAborted (the
process being waited on is gone); when `timeout` seconds pass, with WaitTimeout.
Both are BuildErrors whose message names `what`; the last ignored exception is
chained as their cause. Ctrl-C is never swallowed. AWS has its own waiters
(botocore `client.get_waiter`): use those for AWS resources.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

from pim.engine.errors import WaitAborted, WaitTimeout

T = TypeVar("T")


def until(
    check: Callable[[], T],
    *,
    what: str,
    timeout: float,
    interval: float = 0.1,
    backoff: float = 1.0,
    max_interval: float | None = None,
    alive: Callable[[], bool] | None = None,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Poll check() until it returns a truthy value and return that value.

    timeout, interval, max_interval: seconds; backoff: factor applied to the
    interval after each try (1.0: fixed). Raises WaitTimeout after timeout,
    WaitAborted as soon as alive() is False, or whatever check() raises that is
    not in `ignore`.
    """
    deadline = time.monotonic() + timeout
    cap = max_interval if max_interval is not None else float("inf")
    last: BaseException | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except ignore as e:
            last = e
        if alive is not None and not alive():
            raise WaitAborted(f"gave up waiting for {what}: it is gone") from last
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeout(f"{what}: not ready within {timeout:g} s") from last
        time.sleep(min(interval, remaining))
        interval = min(interval * backoff, cap)
