"""Long work (a build, a deploy, a delete) in a child process of the provider.

Why a child: a build must be stoppable. The engine gives a dynamic provider no
deadline of its own (it sets none on the gRPC call, and the SDK's dynamic server
drops CreateRequest.timeout), so `customTimeouts` reach the provider as an input
and are enforced here: at the deadline the child gets SIGTERM, the engine's own
cleanup stops QEMU and publishes nothing, and the call fails saying so. Every way
`pulumi up` can be stopped ends the same way, a SIGTERM or SIGINT the child turns
into one orderly unwinding (pim.engine.interrupt): Ctrl-C or the engine stopping
its plugins (SIGINT to the provider's process group; the provider, its server gone,
then also SIGTERMs its workers), the provider dying (the parent-death signal, and
the child watching its parent), the engine dying (the provider watches its own
parent, stops its workers and exits). No build is left behind with parent 1.

The protocol: the job as one JSON object on the child's stdin (secrets included:
never argv, never the environment); JSON lines on its stdout, {"event": ...} for
every engine event, then {"result": ...} or {"error": ...}. The parent relays the
events to the engine log (pulumi.log; inside the provider process that is its
stderr, which the engine shows as the provider's output), throttles progress and
says "still working" when nothing was said for a while, so a long build is never
silent.
"""

from __future__ import annotations

import collections
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Iterable

from pim.engine.errors import BuildError, InputError, PimError
from pim.engine.relay import Log, Relay
from pim.engine.run import PIPE, start

GRACE = 90.0  # after SIGTERM: time for the engine to stop QEMU and clean up


class DeadlineExceeded(PimError):
    """A customTimeouts deadline passed; the work was stopped."""


def pulumi_log(level: str, message: str) -> None:
    import pulumi.log

    (pulumi.log.warn if level == "warning" else pulumi.log.info)(message)


def run(op: str, job: dict[str, Any], *, label: str, timeout: float | None = None, secrets: Iterable[str] = (),
        log: Log | None = None) -> dict[str, Any]:
    """Run ops.OPS[op](job) in a child process; its outputs, or the error it raised."""
    secrets = [s for s in secrets if s]
    relay = Relay(label, log or pulumi_log, secrets)
    proc = start([sys.executable, "-m", "pim.pulumi_provider.worker", str(os.getpid())],
                 stdin=PIPE, stdout=PIPE, stderr=PIPE, die_with_parent=signal.SIGTERM)
    _LIVE.add(proc)
    _watch_engine()
    tail: collections.deque[str] = collections.deque(maxlen=40)
    drain = threading.Thread(target=_drain, args=(proc.stderr, tail), daemon=True)
    drain.start()
    try:
        assert proc.stdin is not None
        proc.stdin.write(json.dumps({"op": op, "job": job, "secrets": secrets}).encode())
        proc.stdin.close()
        outcome = _pump(proc, relay, time.monotonic() + timeout if timeout else None, timeout, op)
    except BaseException:
        _stop(proc, relay)
        raise
    finally:
        _LIVE.discard(proc)
    proc.wait()
    drain.join(timeout=5)
    if outcome is None:
        lines = [relay.secrets.redact(line) for line in tail]
        raise BuildError(f"{label}: the worker ended ({_status(proc.returncode)}) without an answer", lines)
    kind, value = outcome
    if kind == "result":
        return value
    error = InputError if value.get("input") else BuildError
    raise error(relay.secrets.redact(f"{label}: {value.get('message', 'failed')}"))


_LIVE: set[subprocess.Popen] = set()  # workers running now, for _watch_engine
_WATCHING = threading.Lock()


def _watch_engine() -> None:
    """Once per provider process: when the engine that started the provider is gone, or the
    provider's main thread has ended (SIGINT stops the SDK's server and the interpreter
    then waits for the RPC threads), SIGTERM every worker, so its build stops in order
    instead of running on with parent 1. With the engine gone nobody waits for an answer:
    once the workers have ended, the provider ends too."""
    if not _WATCHING.acquire(blocking=False):
        return
    from pim.engine.interrupt import watch_parent

    main_thread = threading.main_thread()

    def stop_all() -> None:
        workers = list(_LIVE)
        for proc in workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in workers:
            try:
                proc.wait(timeout=GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
        if main_thread.is_alive():
            os._exit(1)

    watch_parent(stop_all, or_when=lambda: not main_thread.is_alive())


def _pump(proc: subprocess.Popen, relay: Relay, deadline: float | None, timeout: float | None,
          op: str) -> tuple[str, Any] | None:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    outcome = None
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            if deadline is not None and time.monotonic() > deadline:
                relay.say("warning", f"customTimeouts: {op} did not finish within {timeout:.0f} s; stopping it")
                _stop(proc, relay)
                raise DeadlineExceeded(f"{relay.label}: did not finish within {timeout:.0f} s (customTimeouts); "
                                       "it was stopped and nothing was published")
            if sel.select(timeout=1.0):
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    outcome = _handle(line, relay) or outcome
            relay.tick()
    return outcome


def _handle(line: bytes, relay: Relay) -> tuple[str, Any] | None:
    try:
        msg = json.loads(line)
    except ValueError:
        return None
    if "event" in msg:
        relay.event(msg["event"])
        return None
    if "result" in msg:
        return "result", msg["result"]
    if "error" in msg:
        return "error", msg["error"]
    return None


def _stop(proc: subprocess.Popen, relay: Relay) -> None:
    """SIGTERM (the engine cleans up: QEMU stopped, nothing published), then SIGKILL after GRACE."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=GRACE)
    except subprocess.TimeoutExpired:
        relay.say("warning", f"the worker did not stop within {GRACE:.0f} s of SIGTERM: killing it")
        proc.kill()
        proc.wait()


def _drain(stream: Any, tail: collections.deque[str]) -> None:
    for raw in stream:
        tail.append(raw.decode(errors="replace").rstrip())


def _status(code: int | None) -> str:
    if code is None:
        return "still running"
    return f"killed by signal {-code}" if code < 0 else f"exit status {code}"


# ---------------------------------------------------------------- the child

def main() -> int:
    # The protocol owns the real stdout; anything else printing goes to stderr.
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    from pim.engine.interrupt import Interrupted, Unwinder, watch_parent

    # SIGTERM (the provider stopping the work) and SIGINT (Ctrl-C, or the engine stopping
    # the provider's process group) unwind the build once: QEMU stopped, nothing published.
    Unwinder().install().arm()
    if len(sys.argv) > 1:  # the provider gone (even before this line): the same, by SIGTERM
        watch_parent(parent=int(sys.argv[1]))
    lock = threading.Lock()

    def send(obj: dict[str, Any]) -> None:
        line = json.dumps(obj, default=str)
        with lock:
            protocol.write(line + "\n")
            protocol.flush()

    from pim.engine.events import Emitter

    request = json.loads(sys.stdin.read())
    events = Emitter(lambda event: send({"event": event.to_json()}))
    for secret in request.get("secrets", []):
        events.add_secret(secret)
    try:
        from pim.pulumi_provider.ops import OPS

        result = OPS[request["op"]](request["job"], events)
    except PimError as e:
        send({"error": {"type": type(e).__name__, "message": events.redact(str(e)),
                        "input": isinstance(e, InputError)}})
        return 1
    except KeyboardInterrupt as e:
        send({"error": {"type": "Interrupted", "message": "stopped before it finished; nothing was published"}})
        return e.exit_code if isinstance(e, Interrupted) else 130
    except Exception as e:  # a bug or an SDK error: its message, and the traceback on stderr
        import traceback

        traceback.print_exc()
        send({"error": {"type": type(e).__name__, "message": events.redact(f"{type(e).__name__}: {e}")}})
        return 1
    send({"result": result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
