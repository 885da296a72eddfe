"""A build on a remote builder, driven from this machine.

    with Connection(builder) as conn:       # checked host key, bounded connect
        info   <- agent info (version, missing inputs)
        upload the inputs the builder lacks (resumable, verified there)
        agent build: events stream back; heartbeats go out
        fetch the final object (resumable, sha256-verified) into the local store,
        or record where it lives (fetch: false)

Ctrl-C or SIGTERM here ends the agent's stdin: it stops the build the way a local
one stops, and this side waits (up to STOP_GRACE seconds) until it has, so nothing
is left running on the builder when the client returns.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import pim
from pim.engine.builders import agent as agentmod
from pim.engine.builders.context import Context, make
from pim.engine.builders.spec import Builder
from pim.engine.builders.ssh import Connection, lines
from pim.engine.errors import BuildError, InputError
from pim.engine.events import Emitter
from pim.engine.store import manifest as manifests
from pim.engine.store.objects import Store

if TYPE_CHECKING:
    import paramiko

    from pim.engine.config.spec import Config
    from pim.engine.pipeline.build import BuildResult

STOP_GRACE = 60.0  # seconds to wait for the builder to stop its build after we asked


class VersionMismatch(InputError):
    """Client and builder speak different agent protocols."""


def _call(conn: Connection, op: str, job: dict[str, Any], events: Emitter | None = None,
          stage: str | None = None) -> dict[str, Any]:
    """Run `pim agent op` on the builder with `job`; its result. Events it streams go
    to `events`. Raises BuildError/InputError with the builder's message."""
    chan = conn.open(["agent", op])
    b = conn.builder
    try:
        chan.sendall((json.dumps(job) + "\n").encode())
        outcome: tuple[str, Any] | None = None
        tail: list[str] = []
        last = [time.monotonic()]

        def heartbeat() -> None:
            if time.monotonic() - last[0] >= agentmod.HEARTBEAT and not chan.closed:
                chan.sendall(b"\n")
                last[0] = time.monotonic()

        for raw in lines(chan, heartbeat, silent=agentmod.LOST, who=f"builder {b.name}"):
            msg = _json(raw)
            if msg is None:
                tail = (tail + [raw.decode(errors="replace")])[-20:]
            elif "alive" in msg:
                continue
            elif "hello" in msg:
                _check_version(b, msg["hello"], events)
            elif "event" in msg and events is not None:
                e = msg["event"]
                events.emit(e.get("kind", "log"), e.get("stage"), e.get("message", ""),
                            **{**e.get("data", {}), "builder": b.name})
            elif "result" in msg or "error" in msg:
                outcome = ("result", msg["result"]) if "result" in msg else ("error", msg["error"])
    except BaseException:
        _stop(chan, b, events)
        raise
    chan.status_event.wait(5.0)  # the exit status may come just after the output ends
    status = chan.exit_status if chan.status_event.is_set() else None
    chan.close()
    if outcome is None:
        # paramiko gives -1 for a channel closed without an exit status: the link went away
        why = f"exit status {status}" if status not in (None, -1) else "the SSH connection dropped"
        if status == 127:
            raise InputError(f"builder {b.name}: its PIM command {b.pim!r} was not found there; install PIM "
                             "on the builder or set pim: in builders: to its path")
        if any("No such command" in line and "agent" in line for line in tail):
            raise VersionMismatch(f"builder {b.name} runs a PIM release without remote builds (no `pim agent`), "
                                  f"this machine PIM {pim.__version__}: install the same PIM release on both")
        raise BuildError(f"builder {b.name}: `pim agent {op}` ended without an answer ({why})", tail)
    kind, value = outcome
    if kind == "error":
        text = f"builder {b.name}: {value.get('message', 'failed')}"
        raise InputError(text) if value.get("input") else BuildError(text)
    return value


def _json(raw: bytes) -> dict[str, Any] | None:
    try:
        msg = json.loads(raw)
    except ValueError:
        return None
    return msg if isinstance(msg, dict) else None


def _check_version(b: Builder, hello: dict[str, Any], events: Emitter | None) -> None:
    if hello.get("protocol") != agentmod.PROTOCOL:
        raise VersionMismatch(f"builder {b.name} runs PIM {hello.get('version')} (agent protocol "
                              f"{hello.get('protocol')}), this machine PIM {pim.__version__} (protocol "
                              f"{agentmod.PROTOCOL}): install the same PIM release on both")
    if hello.get("version") != pim.__version__ and events is not None:
        events.warning(None, f"builder {b.name} runs PIM {hello.get('version')}, this machine "
                             f"{pim.__version__}: stage keys can differ between releases, so its cache may "
                             "not match this machine's")


def _stop(chan: "paramiko.Channel", b: Builder, events: Emitter | None) -> None:
    """Ask the agent to stop (its stdin ends) and wait up to STOP_GRACE seconds until
    it has ended, which it does only once its build has stopped."""
    if chan.closed:
        return
    stopped = False
    try:
        chan.shutdown_write()
        deadline = time.monotonic() + STOP_GRACE
        chan.settimeout(1.0)
        while time.monotonic() < deadline and not chan.exit_status_ready():
            try:
                if not chan.recv(1 << 16) and chan.eof_received:
                    break
            except OSError:  # socket.timeout included
                continue
        stopped = chan.status_event.wait(5.0) or chan.eof_received
    except Exception:  # the link is gone: the agent notices its stdin ending by itself
        pass
    finally:
        chan.close()
    if events is not None:
        events.log(None, f"builder {b.name}: the remote build was stopped" if stopped else
                   f"builder {b.name}: no word that the remote build stopped within {STOP_GRACE:.0f} s; it stops "
                   "by itself once it notices the session ended")


def upload_inputs(conn: Connection, ctx: Context, info: dict[str, Any], events: Emitter) -> dict[str, str]:
    """Upload every input the builder lacks into its incoming/ folder, each under a
    name of its own (two clients uploading one input never share a file); returns
    {digest: that name}. The agent checks each one's digest before it uses it."""
    from pim.engine.remote.transfer import _Progress

    blobs, sent = ctx.blobs(), {}
    for digest in info.get("missing", []):
        if digest not in blobs:
            continue
        local = blobs[digest]
        size = local.stat().st_size
        name = f"{digest}.{uuid.uuid4().hex}.part"
        events.log(None, f"uploading {local.name} to builder {conn.builder.name} ({size >> 20} MiB)")
        conn.put(local, f"{info['incoming']}/{name}", _Progress(events, "upload", size, local.name))
        sent[digest] = name
    return sent


def _checked(b: Builder, result: dict[str, Any]) -> dict[str, Any]:
    """The builder's result, refused (BuildError) unless its key is a content key and its
    files are plain names that include the artifact with the reported sha256."""
    key, files = result.get("key"), result.get("files")
    bad = None
    if not isinstance(key, str) or not re.fullmatch(r"[0-9a-f]{64}", key):
        bad = f"a key that is not a content key ({key!r})"
    elif not isinstance(files, dict) or not all(isinstance(n, str) and re.fullmatch(r"[A-Za-z0-9._-]+", n)
                                                 and n not in (".", "..") for n in files):
        bad = "file names no store object has"
    elif not all(isinstance(f, dict) and isinstance(f.get("sha256"), str) and isinstance(f.get("size"), int)
                 and not isinstance(f.get("size"), bool) and f["size"] >= 0 for f in files.values()):
        bad = "a file list without a sha256 and size for each file"
    elif Path(str(result.get("path"))).name not in files or \
            files[Path(str(result["path"])).name].get("sha256") != result.get("sha256"):
        bad = "an artifact its file list does not match"
    if bad:
        raise BuildError(f"builder {b.name} answered with {bad}; nothing was taken from it")
    return result


def fetch(conn: Connection, store: Store, result: dict[str, Any], events: Emitter) -> None:
    """Bring the builder's final object into `store`: each file streamed, resumed from a
    partial download of the same object (a stream that drops reconnects and resumes at
    once, `Connection.get`), checked against the sha256 the builder reported; the
    manifest must carry the key and name the artifact with that digest.
    Published atomically, replacing an older object under the key (a forced rebuild).
    Call it holding `store.lock(key)`."""
    from pim.engine.remote.transfer import _Progress

    key = result["key"]
    tag = re.sub(r"[^0-9a-f]", "", str(result.get("id", "")))[:32] or "unknown"
    root = store.root / "partial"
    for other in root.glob(f"{key}-*"):  # a partial download of another build of this key
        if other.name != f"{key}-{tag}":
            shutil.rmtree(other, ignore_errors=True)
    partial = root / f"{key}-{tag}"
    partial.mkdir(parents=True, exist_ok=True)
    total = sum(f["size"] for f in result["files"].values())
    progress = _Progress(events, "fetch", total, f"fetching {key[:12]} from {conn.builder.name}")
    for name, f in result["files"].items():
        conn.get(f"{result['object']}/{name}", partial / name, f["sha256"], f["size"], progress)
    m = manifests.read(partial)
    if m.key != key or m.artifact is None or m.artifact.file not in result["files"] \
            or m.artifact.sha256 != result["sha256"]:
        shutil.rmtree(partial, ignore_errors=True)
        raise BuildError(f"builder {conn.builder.name}: the object it sent is not the build of {key[:12]}")
    with store.workdir(f"fetch-{key[:12]}") as work:
        staging = work / "object"
        os.rename(partial, staging)
        if store.object(key).exists():
            store.set_aside(key)
        store.publish(staging, m)


def record(store: Store, builder: Builder, result: dict[str, Any]) -> Path:
    """Remember that the build of `result['key']` lives on `builder` (fetch: false)."""
    folder = store.root / "remote-builds"
    folder.mkdir(exist_ok=True)
    path = folder / f"{result['key']}.json"
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"builder": builder.name, "address": builder.address, "image": result["image"],
                               "key": result["key"], "path": result["path"], "sha256": result["sha256"],
                               "size": result["size"], "created": manifests.now()}, indent=2))
    os.replace(tmp, path)
    return path


@contextlib.contextmanager
def _link_errors(b: Builder) -> Iterator[None]:
    """An SSH or socket failure after the connection was made, as a BuildError naming the builder."""
    import paramiko

    try:
        yield
    except (paramiko.SSHException, EOFError, ConnectionError, socket.timeout) as e:
        raise BuildError(f"builder {b.name}: the SSH connection failed during the build ({e or type(e).__name__}); "
                         "the builder stops its build when it notices; run it again") from None


def build(cfg: "Config", name: str, events: Emitter, *, store: Store, builder: Builder, force: bool = False,
          fetch_result: bool = True) -> "BuildResult":
    """Build image `name` of `cfg` on remote `builder`; see the module's docstring.

    Returns the BuildResult; with `fetch_result` False its `path` is on the builder
    and `builder` names it. Raises BuilderUnreachable/BuilderRefused (connection),
    VersionMismatch, InputError/BuildError as the builder reports them.
    """
    from pim.engine.pipeline.build import BuildResult, _result
    from pim.engine.source.fetch import resolve_iso

    spec = cfg.image(name)
    iso_sha = None if spec.source.is_url else resolve_iso(spec.source, cfg.base_dir, store.root, events)[1]
    ctx = make(cfg, name, iso_sha)
    if spec.ssh.password is not None:
        events.add_secret(spec.ssh.password.get_secret_value())
    events.log(None, f"building on {builder.name} ({builder.address})")
    with Connection(builder, log=lambda text: events.log(None, text)) as conn, _link_errors(builder):
        base = {"cache_dir": builder.cache_dir, "max_jobs": builder.max_jobs}
        info = _call(conn, "info", {**base, "digests": sorted(ctx.blobs())}, events)
        sent = upload_inputs(conn, ctx, info, events)
        job = {**base, "image": name, "spec": ctx.spec, "files": ctx.digests, "uploads": sent,
               "force": force, "builder": builder.name, "path_names": ctx.names}
        # The builder computes this store's keyed hashes (the password's, the input map's).
        from pim.engine.pipeline.keys import store_salt

        job["salt"] = store_salt(store.root).hex()
        result = _checked(builder, _call(conn, "build", job, events))
        if not fetch_result:
            record(store, builder, result)
            return BuildResult(name, result["key"], Path(result["path"]), Path(result["object"]) / manifests.FILE,
                               result["sha256"], result["size"], result["cached"], builder.name, kept_on_builder=True)
        with store.lease(result["key"]):
            with store.lock(result["key"]):  # one fetch of a key at a time; a second finds it published
                if force or not store.has(result["key"]):
                    try:
                        fetch(conn, store, result, events)
                    except OSError as e:
                        if isinstance(e, (ConnectionError, socket.timeout)):
                            raise
                        raise BuildError(f"fetching {result['key'][:12]} into {store.root} failed: "
                                         f"{e.strerror or e}; free space or fix permissions, then run the "
                                         "build again (the download resumes)") from None
            out = _result(store, name, result["key"], cached=result["cached"])
    (store.root / "remote-builds" / f"{result['key']}.json").unlink(missing_ok=True)
    return BuildResult(out.image, out.key, out.path, out.manifest_path, out.sha256, out.size, out.cached,
                       builder.name)
