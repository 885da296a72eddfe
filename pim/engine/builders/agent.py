"""The builder's side of a remote build: `pim agent OP` run over SSH.

Protocol (version PROTOCOL), one JSON object per line:

    client -> agent (stdin)   the job, then an empty line at least every HEARTBEAT s
    agent -> client (stdout)  {"hello": {...}}, then {"event": {...}} for each
                              engine event, then {"result": {...}} or {"error": {...}}

Ops: `info` (version, host, accelerators, free disk, running builds, which inputs
are missing) and `build` (lay out the context, run PIM's engine in this builder's
store, report the object's files). The agent stops its build, the way SIGTERM stops
a local one (QEMU shut down, nothing left behind, nothing unfinished published),
when its stdin ends (the client went away, or sshd closed the session) or when no
heartbeat came for LOST seconds (the link died silently).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import pim

PROTOCOL = 3  # 2: uploads by name, alive lines, the client's salt; 3: the context's path names, the salt always
HEARTBEAT = 2.0  # seconds between the client's heartbeats
LOST = 20.0  # seconds without one before the agent stops its build


class _Out:
    """The protocol channel: JSON lines on the real stdout, one writer at a time."""

    def __init__(self, stream: IO[str]):
        self.stream, self.lock = stream, threading.Lock()

    def send(self, obj: dict[str, Any]) -> None:
        with self.lock:
            try:
                self.stream.write(json.dumps(obj) + "\n")
                self.stream.flush()
            except (BrokenPipeError, OSError):
                pass  # the client is gone; the watchdog stops the work


def _alive(out: _Out, every: float = HEARTBEAT) -> None:
    """A line for the client every `every` seconds, so it can tell a busy build from a dead link."""

    def beat() -> None:
        while True:
            time.sleep(every)
            out.send({"alive": round(time.time(), 1)})

    threading.Thread(target=beat, daemon=True, name="agent-alive").start()


def _watch(stdin: IO[bytes], lost: float = LOST) -> None:
    """Send this process SIGTERM when stdin ends or stays silent for `lost` seconds."""
    last = [time.monotonic()]

    def read() -> None:
        for _ in stdin:
            last[0] = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)

    def clock() -> None:
        while time.monotonic() - last[0] < lost:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=read, daemon=True, name="agent-stdin").start()
    threading.Thread(target=clock, daemon=True, name="agent-heartbeat").start()


def _store_root(job: dict[str, Any]) -> Path:
    from pim.engine.paths import cache_dir

    return Path(job["cache_dir"]).expanduser() if job.get("cache_dir") else cache_dir()


def inputs_dir(root: Path) -> Path:
    path = root / "inputs" / "sha256"
    path.mkdir(parents=True, exist_ok=True)
    (root / "inputs" / "incoming").mkdir(exist_ok=True)
    return path


def info(job: dict[str, Any]) -> dict[str, Any]:
    """What `pim builders check` shows and a client needs before a build."""
    from pim.engine.builders.route import Host
    from pim.engine.builders.slots import running
    from pim.engine.store.objects import Store

    store = Store(_store_root(job))
    blobs = inputs_dir(store.root)
    _forget_uploads(blobs.parent / "incoming")
    host = Host.this()
    out: dict[str, Any] = {
        "version": pim.__version__, "protocol": PROTOCOL, "cache_dir": str(store.root),
        "inputs": str(blobs), "incoming": str(blobs.parent / "incoming"),
        "host": {"os": host.os, "arch": host.arch},
        "free_bytes": shutil.disk_usage(store.root).free,
        "running": running(store.root, int(job.get("max_jobs", 1))),
        "missing": [d for d in job.get("digests", []) if not (blobs / d).is_file()],
    }
    if job.get("probe"):
        from pim.engine.qemu import accel

        out["accel"] = {a: accel.choose(a).accel for a in job.get("archs", ["x86_64"])}
    return out


UPLOAD_NAME = re.compile(r"^(?P<digest>[0-9a-f]{64})\.[0-9a-f]{32}\.part$")
STALE_UPLOAD = 86400.0  # seconds: an upload nobody finished in a day is removed


def _forget_uploads(incoming: Path) -> None:
    """Remove uploads abandoned long ago (a client killed mid-upload)."""
    for part in incoming.glob("*.part"):
        try:
            if time.time() - part.stat().st_mtime > STALE_UPLOAD:
                part.unlink()
        except OSError:
            pass


def _take_uploads(blobs: Path, uploads: dict[str, str]) -> None:
    """Move each finished upload ({digest: its name in incoming/}, one name per
    upload, so two clients never write one file) into the input store once its bytes
    hash to its digest. Raises BuildError for a damaged one (removed) or a bad name."""
    from pim.engine.errors import BuildError
    from pim.engine.pipeline.keys import file_digest

    for digest, name in uploads.items():
        m = UPLOAD_NAME.match(name)
        if m is None or m["digest"] != digest:
            raise BuildError(f"{name!r} is not an upload name for {digest[:12]}")
        part = blobs.parent / "incoming" / name
        if (blobs / digest).is_file():
            part.unlink(missing_ok=True)
            continue
        if file_digest(part) != digest:
            part.unlink()
            raise BuildError(f"an uploaded input did not hash to {digest[:12]}; it was discarded: run the build again")
        os.replace(part, blobs / digest)  # atomic: a concurrent identical upload replaces it with the same bytes


def build(job: dict[str, Any], out: _Out) -> dict[str, Any]:
    """Run one build from a context; the object's files for the client to fetch."""
    from pim.engine.builders.context import materialize
    from pim.engine.config.spec import parse_config
    from pim.engine.events import Emitter, Event
    from pim.engine.pipeline.build import build as run_build
    from pim.engine.pipeline.keys import file_digest
    from pim.engine.remote import open_remote
    from pim.engine.store.objects import Store

    store = Store(_store_root(job))
    blobs = inputs_dir(store.root)
    _take_uploads(blobs, job.get("uploads", {}))
    events = Emitter(lambda e: out.send({"event": Event.to_json(e)}))
    with store.workdir(f"context-{job['image']}") as ctx:
        materialize(ctx, job["files"], lambda d: blobs / d)
        cfg = parse_config({"images": {job["image"]: job["spec"]}}, ctx, f"context of {job['image']}")
        result = run_build(cfg, job["image"], events, store=store, force=bool(job.get("force")),
                           builder=job.get("builder", "remote"), remote=open_remote(None),
                           max_jobs=int(job.get("max_jobs", 1)), path_names=job.get("path_names") or {},
                           secret_salt=bytes.fromhex(job["salt"]) if job.get("salt") else None)
    obj = result.path.parent
    files = {}
    for f in sorted(obj.iterdir()):
        if f.is_file() and f.name != "done":
            sha = result.sha256 if f == result.path else file_digest(f)
            files[f.name] = {"sha256": sha, "size": f.stat().st_size}
    return {"image": result.image, "key": result.key, "path": str(result.path), "sha256": result.sha256,
            "size": result.size, "cached": result.cached, "object": str(obj), "files": files,
            "id": store.manifest(result.key).id}


def main(op: str) -> int:
    """Serve one op on stdin/stdout; the exit status the CLI returns."""
    from pim.engine.errors import InputError, PimError
    from pim.engine.interrupt import unwinding

    protocol_out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else that prints goes to stderr, never into the protocol
    out = _Out(protocol_out)
    out.send({"hello": {"version": pim.__version__, "protocol": PROTOCOL, "pid": os.getpid()}})
    line = sys.stdin.buffer.readline()
    try:
        job = json.loads(line) if line.strip() else {}
    except ValueError:
        out.send({"error": {"message": "the job is not JSON", "input": True}})
        return 2
    with unwinding() as unwinder:
        _watch(sys.stdin.buffer, float(job.get("lost", LOST)))
        _alive(out)
        try:
            if op == "info":
                result = info(job)
            elif op == "build":
                result = build(job, out)
            else:
                out.send({"error": {"message": f"unknown agent op {op!r}", "input": True}})
                return 2
        except PimError as e:
            out.send({"error": {"message": str(e), "input": isinstance(e, InputError), "type": type(e).__name__}})
            return e.exit_code
        except KeyboardInterrupt:
            out.send({"error": {"message": "stopped", "interrupted": True}})
            return 128 + (unwinder.fired or signal.SIGTERM)
        except Exception as e:  # noqa: BLE001 - reported to the client, whatever it is
            import traceback

            traceback.print_exc()  # stderr: the client shows its last lines
            out.send({"error": {"message": f"{type(e).__name__}: {e}", "internal": True}})
            return 1
    out.send({"result": result})
    return 0
