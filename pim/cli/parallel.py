"""Several `pim build`s side by side: one child process per image.

Each child is `pim build IMAGE --json` with the same options; it routes its image
and holds its builder's slot while it builds, so `max_jobs` is kept by the builders
themselves. Its events are shown here with the image's name in front of the stage
(`web/install`); with --json they go out as they come, each tagged with `image`.
Ctrl-C reaches every child (they share the terminal's process group); SIGTERM here
is passed on to each. The exit status is the worst of the children's.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import typer

from pim.engine.events import Event


def _argv(config: Path, image: str, flags: dict[str, Any], verbose: bool) -> list[str]:
    argv = [sys.executable, "-m", "pim.cli.main", "build", image, "--config", str(config), "--json"]
    argv += ["--force"] * bool(flags["force"]) + ["--no-remote-cache"] * bool(flags["no_remote"])
    argv += ["--local"] * bool(flags["local"]) + ["--no-fetch"] * bool(flags["no_fetch"])
    argv += ["--verbose"] * verbose + (["--builder", flags["builder"]] if flags["builder"] else [])
    return argv


def build_many(config: Path, images: list[str], json_out: bool, verbose: bool, **flags: Any) -> int:
    """Build `images` at once; the exit status: 0 when every build succeeded, else the
    worst child's (a child killed by signal N counts as 128 + N)."""
    from pim.cli.render import event_stream
    from pim.engine.interrupt import Interrupted, unwinding
    from pim.engine.run import PIPE, start

    results: dict[str, dict[str, Any]] = {}
    with event_stream(json_out, verbose) as events, unwinding():
        children = {start(_argv(config, image, flags, verbose), stdout=PIPE, stderr=None,
                          die_with_parent=signal.SIGTERM): image for image in images}
        try:
            _pump(children, events, results, json_out)
        except KeyboardInterrupt as e:
            for proc in children:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in children:  # keep their pipes drained while they clean up
                threading.Thread(target=proc.stdout.read, daemon=True).start()
            for proc in children:
                proc.wait()
            typer.echo("interrupted: every build was stopped and nothing unfinished was published", err=True)
            return e.exit_code if isinstance(e, Interrupted) else 130
        codes = {image: _status(proc.wait()) for proc, image in children.items()}
    for image in images:
        r = results.get(image, {})
        if not json_out:
            status = "ok" if codes[image] == 0 else f"failed (exit {codes[image]})"
            where = f" on {r['builder']}" if r.get("builder") not in (None, "local") else ""
            typer.echo(f"{image}: {status}{where} {r.get('path') or r.get('message', '')}", err=True)
    return max(codes.values(), default=0)


def _status(code: int) -> int:
    """A child's exit status as a shell reports it: killed by signal N is 128 + N."""
    return 128 - code if code < 0 else code


def _pump(children: dict[Any, str], events: Any, results: dict[str, dict[str, Any]], json_out: bool) -> None:
    bufs = {proc.stdout.fileno(): b"" for proc in children}
    by_fd = {proc.stdout.fileno(): image for proc, image in children.items()}
    with selectors.DefaultSelector() as sel:
        for fd in by_fd:
            sel.register(fd, selectors.EVENT_READ)
        while by_fd:
            for key, _ in sel.select(timeout=1.0):
                fd = key.fd
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    sel.unregister(fd)
                    del by_fd[fd]
                    continue
                bufs[fd] += chunk
                while b"\n" in bufs[fd]:
                    line, bufs[fd] = bufs[fd].split(b"\n", 1)
                    _show(by_fd[fd], line, events, results, json_out)


def _show(image: str, line: bytes, events: Any, results: dict[str, dict[str, Any]], json_out: bool) -> None:
    try:
        e = json.loads(line)
    except ValueError:
        return
    data = e.get("data", {})
    if e.get("kind") == "result":
        results[image] = {**data, "message": e.get("message", "")}
    if json_out:
        sys.stdout.write(json.dumps({**e, "image": image}) + "\n")
        sys.stdout.flush()
        return
    if e.get("kind") == "result":
        return
    stage = f"{image}/{e['stage']}" if e.get("stage") else image
    events._sink(Event(e.get("kind", "log"), stage, e.get("message", ""), data, e.get("time", 0.0)))
