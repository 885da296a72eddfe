"""How a process that runs a build stops it: signals become one orderly unwinding.

The CLI (`pim build`), the Terraform provider and the Pulumi worker all stop a build
the same way: SIGINT or SIGTERM raises `Interrupted` (a KeyboardInterrupt) in the
main thread, and the build's `with` blocks stop QEMU and remove its runtime files,
scratch folder and unpublished objects on the way out.

The signal must be a real one, delivered to the main thread. `_thread.interrupt_main()`
only sets a flag that the main thread looks at when it next runs Python code; a main
thread blocked in a lock or a socket read with no timeout (paramiko waiting for a
provisioning step that sleeps for ten minutes) never does. A signal makes that wait
fail with EINTR, the handler runs, and the exception unwinds from there.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any, Callable, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A signal (SIGINT, SIGTERM) stopped the work; `exit_code` is 128 + the signal number."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class Unwinder:
    """Signal handlers that raise `Interrupted` once while armed, and ignore the signal otherwise.

    Once raised, further signals are ignored until `arm()` is called again: the cleanup
    the first one started (QEMU's shutdown ladder, each rung with its own timeout) must
    not be cut short by a second Ctrl-C, or QEMU and its runtime files would be left.
    `received` holds every signal number seen, armed or not.

    A handler runs wherever the main thread is, and Python prints and drops an exception
    raised where nothing can catch it: a finalizer the garbage collector happens to run
    (`__del__`, a generator being closed, a weakref callback). Raised there, the
    interrupt would be lost and the build would go on. Python hands every such dropped
    exception to `sys.unraisablehook`; while installed, the Unwinder takes its own
    `Interrupted` back there and delivers the signal again a moment later.
    One finalizer drops it without telling the hook: an I/O object's (`io.IOBase`:
    urllib3's and http.client's responses under every boto3 call, socket files), whose
    `closed` and `close()` Python code it runs and whose exception it clears. A signal
    handled there is not raised: it is delivered again a moment later, like a dropped one.
    """

    def __init__(self, on_signal: Callable[[int], None] | None = None):
        self.armed = False
        self.fired: int | None = None
        self.received: list[int] = []
        self._on_signal = on_signal
        self._previous: dict[int, object] = {}
        self._deferred: int | None = None  # a signal whose Interrupted was dropped, delivered again
        self._previous_hook: Callable[[object], None] | None = None

    def install(self, signals: tuple[int, ...] = SIGNALS) -> "Unwinder":
        """Install the handlers (main thread only: Python's rule for signal.signal)."""
        for signum in signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        self._previous_hook = sys.unraisablehook
        sys.unraisablehook = self._unraisable
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()
        if self._previous_hook is not None:
            sys.unraisablehook = self._previous_hook
            self._previous_hook = None

    def arm(self) -> None:
        self.armed, self.fired = True, None

    def disarm(self) -> None:
        self.armed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._deferred == signum:
            self._deferred = None  # the same signal once more: already counted and passed on
        else:
            self.received.append(signum)
            if self._on_signal is not None:
                self._on_signal(signum)
        if self.armed and self.fired is None:
            if _closing_io(frame):  # maybe an I/O object's finalizer, which would clear it
                self._again(signum)
                return
            self.fired = signum
            raise Interrupted(signum)

    def _again(self, signum: int) -> None:
        """Deliver signum again in a moment, counted once."""
        self._deferred = signum
        threading.Timer(REDELIVERY, signal_main_thread, (signum,)).start()

    def _unraisable(self, unraisable: Any) -> None:
        """sys.unraisablehook: our Interrupted, dropped where it was raised, comes again."""
        exc = unraisable.exc_value
        if isinstance(exc, Interrupted) and self.armed and self.fired == exc.signum:
            self.fired = None
            self._again(exc.signum)
            return
        if self._previous_hook is not None:
            self._previous_hook(unraisable)


_IO_FINALIZER_CALLS = ("closed", "close")  # what io.IOBase's finalizer runs, its errors cleared


def _closing_io(frame: FrameType | None) -> bool:
    """True when the main thread is in an I/O object's `closed` or `close()` (or what
    they call). The finalizer of an `io.IOBase` calls them and clears any exception
    they raise, with no trace and without `sys.unraisablehook` (CPython's
    iobase_finalize); an explicit call is short, so waiting a moment there costs nothing."""
    while frame is not None:
        code = frame.f_code
        if code.co_name in _IO_FINALIZER_CALLS and code.co_varnames[:1] == ("self",) \
                and isinstance(frame.f_locals.get("self"), io.IOBase):
            return True
        frame = frame.f_back
    return False


REDELIVERY = 0.02  # seconds before a signal whose Interrupted was dropped comes again


@contextlib.contextmanager
def unwinding(signals: tuple[int, ...] = SIGNALS) -> Iterator[Unwinder]:
    """Within the block, the first of `signals` raises `Interrupted`; handlers restored after."""
    unwinder = Unwinder().install(signals)
    unwinder.arm()
    try:
        yield unwinder
    finally:
        unwinder.disarm()
        unwinder.restore()


def signal_main_thread(signum: int) -> None:
    """Deliver signum to this process's main thread (from any thread), so that a blocking
    wait there ends with EINTR and the handler runs at once."""
    signal.pthread_kill(threading.main_thread().ident, signum)  # type: ignore[arg-type]


def watch_parent(on_death: Callable[[], None] | None = None, parent: int | None = None,
                 interval: float = 0.5, or_when: Callable[[], bool] | None = None) -> threading.Thread:
    """A daemon thread that calls on_death (default: SIGTERM to the main thread) once this
    process's parent is gone, or once `or_when()` is true, checked every `interval` seconds.

    parent: the pid expected as parent (default: the current one); when it is already gone
    (this process was re-parented before the watch began) on_death runs at once.
    Polling getppid(), unlike PR_SET_PDEATHSIG, also holds when the parent is a threaded
    program whose spawning thread ends before it does (Go's runtime, a gRPC pool).
    """
    expected = os.getppid() if parent is None else parent
    action = on_death or (lambda: signal_main_thread(signal.SIGTERM))

    def watch() -> None:
        while os.getppid() == expected and not (or_when and or_when()):
            time.sleep(interval)
        action()

    thread = threading.Thread(target=watch, name="pim-parent-watch", daemon=True)
    thread.start()
    return thread
