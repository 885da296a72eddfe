"""Rendering engine events: progress bars on a terminal, plain lines elsewhere,
JSON lines with --json. Human output goes to stderr; JSON to stdout."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import time
from typing import Any, Iterator

from pim.engine.events import Emitter, Event


_MARKUP = re.compile(r"(?<!\\)\[/?(?:dim|bold|yellow)\]")


class HumanRenderer:
    """A bar per stage (a byte bar for downloads) on a terminal (rich); timestamped
    plain lines otherwise, written without loading rich (a log, a pipe, an IaC tool
    reading stderr: a cached build answers sooner)."""

    def __init__(self, verbose: bool = False):
        self.console: Any = None
        self.verbose = verbose
        self._started = time.monotonic()
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}
        if sys.stderr.isatty():
            from rich.console import Console

            self.console = Console(stderr=True, highlight=False)
            from rich.progress import (BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn,
                                       TimeElapsedColumn)

            self._progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.description:<10}"), BarColumn(),
                                      DownloadColumn(), TextColumn("{task.fields[note]}"), TimeElapsedColumn(),
                                      console=self.console, transient=False)
            self._progress.start()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()

    def _print(self, text: str) -> None:
        stamp = f"[dim]{time.monotonic() - self._started:6.1f}s[/dim]"
        if self.console is not None:
            self.console.print(f"{stamp} {text}")
        else:  # the markup's tags dropped and its escapes undone, as rich does off a terminal
            sys.stderr.write(_MARKUP.sub("", f"{stamp} {text}").replace("\\[", "[") + "\n")
            sys.stderr.flush()

    def _task(self, stage: str, total: float | None = None) -> Any:
        if stage not in self._tasks:
            self._tasks[stage] = self._progress.add_task(stage, total=total, note="")
        return self._tasks[stage]

    def __call__(self, event: Event) -> None:
        stage = event.stage or ""
        msg = event.message.replace("[", r"\[")
        if event.kind == "warning":
            self._print(f"[yellow]warning[/yellow] {stage} {msg}")
            return
        if self._progress is None:
            self._plain(event, stage, msg)
            return
        if event.kind == "stage-begin":
            self._task(stage)
            if event.data.get("cached"):
                self._progress.update(self._task(stage), note="cached")
        elif event.kind == "stage-end":
            task = self._task(stage, total=1)
            self._progress.update(task, total=1, completed=1, note="cached" if event.data.get("cached") else "done")
        elif event.kind == "progress":
            task = self._task(stage, total=event.data.get("total"))
            self._progress.update(task, completed=event.data.get("done", 0), total=event.data.get("total"))
        elif event.kind == "log" and stage:
            self._progress.update(self._task(stage), note=msg[-60:])
            if self.verbose or event.data.get("source") not in ("console", "syslog", "ssh", "http", "pkgcache"):
                self._progress.console.print(f"  [dim]{stage}[/dim] {msg}")

    def _plain(self, event: Event, stage: str, msg: str) -> None:
        if event.kind == "stage-begin":
            self._print(f"▶ [bold]{stage}[/bold]" + (" (cached)" if event.data.get("cached") else ""))
        elif event.kind == "stage-end":
            self._print(f"✔ [bold]{stage}[/bold] {msg}")
        elif event.kind == "progress":
            done, total = event.data.get("done", 0), event.data.get("total")
            if total and done == total:
                self._print(f"  {stage} {msg} {done >> 20} MiB")
        elif event.kind == "log":
            if event.data.get("source") in ("console", "syslog") and not self.verbose:
                return
            self._print(f"  [bold]{stage}[/bold] {msg}")


def json_renderer(event: Event) -> None:
    sys.stdout.write(json.dumps(event.to_json()) + "\n")
    sys.stdout.flush()


@contextlib.contextmanager
def event_stream(json_out: bool, verbose: bool) -> Iterator[Emitter]:
    """The Emitter a command hands the engine: JSON lines or human progress, closed after."""
    if verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
    renderer = None if json_out else HumanRenderer(verbose)
    try:
        yield Emitter(json_renderer if renderer is None else renderer)
    finally:
        if renderer is not None:
            renderer.close()
