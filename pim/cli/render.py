"""Rendering engine events: a live status on a terminal, plain lines elsewhere,
JSON lines with --json. Human output goes to stderr; JSON to stdout."""

from __future__ import annotations

import json
import sys
import time

from pim.engine.events import Event


class HumanRenderer:
    def __init__(self, verbose: bool = False):
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)
        self.verbose = verbose
        self._started = time.monotonic()
        self._last_progress = 0.0

    def __call__(self, event: Event) -> None:
        t = f"[dim]{time.monotonic() - self._started:6.1f}s[/dim]"
        stage = f"[bold]{event.stage}[/bold] " if event.stage else ""
        msg = event.message.replace("[", r"\[")
        if event.kind == "stage-begin":
            hint = " (cached)" if event.data.get("cached") else ""
            self.console.print(f"{t} ▶ {stage}{hint}")
        elif event.kind == "stage-end":
            self.console.print(f"{t} ✔ {stage}{msg}")
        elif event.kind == "warning":
            self.console.print(f"{t} [yellow]warning[/yellow] {stage}{msg}")
        elif event.kind == "progress":
            now = time.monotonic()
            if now - self._last_progress > 1.0:
                self._last_progress = now
                done, total = event.data.get("done", 0), event.data.get("total")
                pct = f"{100 * done / total:5.1f}%" if total else f"{done >> 20} MiB"
                self.console.print(f"{t} … {stage}{msg} {pct}")
        elif event.kind == "log":
            source = event.data.get("source")
            if source == "console" and not self.verbose:
                return
            self.console.print(f"{t}   {stage}{msg}")


def json_renderer(event: Event) -> None:
    sys.stdout.write(json.dumps(event.to_json()) + "\n")
    sys.stdout.flush()
