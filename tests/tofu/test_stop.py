"""StopProvider and SIGTERM against the provider's main-thread runner, without QEMU.

The regression this guards: StopProvider used `_thread.interrupt_main()`, a flag the main
thread only reads when it runs Python code again. A build waiting for a provisioning
step's output (paramiko: a lock acquired with no timeout) never did, so `terraform
apply` could not be stopped. The call here blocks the same way."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

from pim.tofu.plugin.base import Diag
from pim.tofu.plugin.server import MainThread


def _serve(main: MainThread, fn: Any, then: Any) -> dict[str, Any]:
    """Run fn through main (as a gRPC thread would), call then() once it is running; returns
    what the call gave and how long the main loop ran."""
    got: dict[str, Any] = {}

    def rpc() -> None:
        try:
            got["value"] = main.call(fn)
        except Exception as e:  # noqa: BLE001 - the test looks at it
            got["error"] = e
        main.stop()

    def trigger() -> None:
        while not main.busy:
            time.sleep(0.01)
        time.sleep(0.2)
        then()
        deadline = time.monotonic() + 10
        while main.busy and time.monotonic() < deadline:
            time.sleep(0.05)
        if main.busy:  # then() did not stop it: end the call anyway, so the test fails instead of hanging
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # type: ignore[arg-type]

    caller = threading.Thread(target=rpc, daemon=True)
    caller.start()
    threading.Thread(target=trigger, daemon=True).start()
    t0 = time.monotonic()
    try:
        main.loop()
    finally:
        main.signals.restore()
    got["seconds"] = time.monotonic() - t0
    caller.join(timeout=5)  # its answer (after SIGTERM the loop ends without waiting for it)
    return got


def test_stop_provider_interrupts_a_call_blocked_without_timeout() -> None:
    main = MainThread()
    got = _serve(main, lambda: threading.Event().wait(), main.interrupt)
    assert isinstance(got.get("error"), Diag), got
    assert "nothing half-done was kept" in got["error"].summary
    assert got["seconds"] < 5


def test_sigterm_interrupts_the_call_and_ends_the_loop() -> None:
    main = MainThread()
    got = _serve(main, lambda: threading.Event().wait(), lambda: signal.pthread_kill(
        threading.main_thread().ident, signal.SIGTERM))  # type: ignore[arg-type]
    assert isinstance(got.get("error"), Diag) and got["seconds"] < 5
    assert main.stopped.is_set()


def test_sigint_while_idle_is_ignored() -> None:
    """Terraform handles Ctrl-C through StopProvider: a SIGINT between calls changes nothing."""
    main = MainThread()

    def idle_sigint_then_call() -> None:
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # type: ignore[arg-type]
        time.sleep(0.2)

    got = _serve(main, lambda: time.sleep(0.3) or "done", lambda: None)
    assert got.get("value") == "done"
    main2 = MainThread()
    threading.Timer(0.1, idle_sigint_then_call).start()
    threading.Timer(0.5, main2.stop).start()
    try:
        main2.loop()
    finally:
        main2.signals.restore()
    assert main2.signals.received == [signal.SIGINT] and main2.signals.fired is None
