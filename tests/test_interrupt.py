"""Signals become one orderly unwinding (pim.engine.interrupt), and they end a main
thread blocked where only data could end it: a lock acquired with no timeout, which
is where paramiko waits for a provisioning step's output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from pim.engine.interrupt import Interrupted, Unwinder, signal_main_thread, unwinding


def _later(seconds: float, fn) -> threading.Thread:  # type: ignore[no-untyped-def]
    t = threading.Timer(seconds, fn)
    t.start()
    return t


def test_sigterm_ends_a_wait_without_timeout_as_interrupted_with_status_143() -> None:
    t0 = time.monotonic()
    with pytest.raises(Interrupted) as e, unwinding():
        _later(0.2, lambda: os.kill(os.getpid(), signal.SIGTERM))
        threading.Event().wait()  # no timeout: only the signal can end it
    assert e.value.signum == signal.SIGTERM and e.value.exit_code == 143
    assert time.monotonic() - t0 < 5
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_a_signal_sent_from_another_thread_reaches_the_blocked_main_thread() -> None:
    t0 = time.monotonic()
    with pytest.raises(Interrupted), unwinding():
        _later(0.2, lambda: signal_main_thread(signal.SIGINT))
        threading.Event().wait()
    assert time.monotonic() - t0 < 5


def test_only_the_first_signal_raises_so_the_cleanup_it_started_runs_to_the_end() -> None:
    cleaned = False
    with pytest.raises(Interrupted), unwinding() as unwinder:
        try:
            signal_main_thread(signal.SIGINT)
            time.sleep(5)
        finally:
            signal_main_thread(signal.SIGTERM)  # a second Ctrl-C / SIGTERM during the cleanup
            time.sleep(0.1)
            cleaned = True
    assert cleaned and unwinder.received == [signal.SIGINT, signal.SIGTERM]


def test_a_signal_that_lands_in_a_closing_generator_is_not_lost() -> None:
    """A suspended generator that the garbage collector closes runs its `finally` as a
    finalizer too; an interrupt raised there is dropped the same way."""
    import gc

    def chunks():  # type: ignore[no-untyped-def]
        try:
            yield b"x"
        finally:
            signal_main_thread(signal.SIGINT)
            time.sleep(0.2)  # the handler runs here, while the generator is being finalized

    t0 = time.monotonic()
    with pytest.raises(Interrupted), unwinding() as unwinder:
        gen = chunks()
        next(gen)
        cycle: list[object] = [gen]
        cycle.append(cycle)  # only the cycle collector frees it, as a finalizer
        del gen, cycle
        gc.collect()
        threading.Event().wait(5)  # only a signal delivered again ends this early
    assert time.monotonic() - t0 < 3
    assert unwinder.received == [signal.SIGINT]


def test_a_signal_that_lands_in_a_finalizer_is_not_lost() -> None:
    """Raised inside `__del__` (the garbage collector runs them anywhere), the interrupt
    would be printed as "Exception ignored" and dropped; it comes again just after."""

    class Finalized:
        def __del__(self) -> None:
            signal_main_thread(signal.SIGINT)
            time.sleep(0.2)  # the handler runs here, inside the finalizer

    t0 = time.monotonic()
    with pytest.raises(Interrupted), unwinding() as unwinder:
        obj = Finalized()
        del obj
        threading.Event().wait(5)  # only a signal delivered again ends this early
    assert time.monotonic() - t0 < 3
    assert unwinder.received == [signal.SIGINT]  # counted once, though delivered twice


def test_a_signal_that_lands_in_an_io_objects_finalizer_is_not_lost() -> None:
    """An `io.IOBase` finalizer (urllib3's response under every boto3 call) runs the
    object's `closed` and `close()` and clears what they raise, without telling
    sys.unraisablehook: the signal must not be raised there, and must still come."""
    import io

    class Response(io.IOBase):
        @property
        def closed(self) -> bool:  # type: ignore[override]
            signal_main_thread(signal.SIGINT)
            time.sleep(0.2)  # the handler runs here, inside the finalizer
            return True

    t0 = time.monotonic()
    with pytest.raises(Interrupted), unwinding() as unwinder:
        obj = Response()
        del obj
        threading.Event().wait(5)  # only a signal delivered again ends this early
    assert time.monotonic() - t0 < 3
    assert unwinder.received == [signal.SIGINT]


def test_disarmed_the_handler_records_the_signal_and_does_not_raise() -> None:
    unwinder = Unwinder().install()
    try:
        signal_main_thread(signal.SIGINT)
        time.sleep(0.1)
        assert unwinder.received == [signal.SIGINT] and unwinder.fired is None
    finally:
        unwinder.restore()


def test_a_process_whose_parent_dies_gets_sigterm(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The watch the providers and the Pulumi worker run: parent gone -> SIGTERM -> unwinding."""
    child = (
        "import sys, threading\n"
        "from pim.engine.interrupt import Interrupted, unwinding, watch_parent\n"
        "with unwinding():\n"
        "    watch_parent(interval=0.1)\n"
        "    print('ready', flush=True)\n"
        "    try:\n"
        "        threading.Event().wait()\n"
        "    except Interrupted as e:\n"
        "        open(sys.argv[1], 'w').write(str(e.exit_code))\n"
    )
    out = str(tmp_path / "status")
    # the middle process starts the child and is then killed; the child is re-parented
    middle = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, '-c', {child!r}, {out!r}], stdout=subprocess.PIPE, text=True)\n"
        "print(p.stdout.readline().strip(), flush=True)\n"
        "time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    assert middle.stdout is not None and middle.stdout.readline().strip() == "ready"
    middle.kill()
    middle.wait()
    deadline = time.monotonic() + 10
    while not os.path.exists(out) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.2)
    with open(out) as f:
        assert f.read() == "143"
