"""`pim build`."""

from __future__ import annotations

from pathlib import Path

import typer

from pim.cli.common import ConfigOpt, fail, open_store


def build(
    image: str = typer.Argument(..., help="Image name from the config"),
    config: Path = ConfigOpt,
    force: bool = typer.Option(False, "--force", help="Ignore cached stages and build everything again"),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON event per line on stdout"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the VM's console too"),
    no_remote: bool = typer.Option(False, "--no-remote-cache", help="Neither pull from nor push to the remote cache"),
) -> None:
    """Build an image: install, provision, generalize, compress."""
    from pim.cli.render import event_stream
    from pim.engine.pipeline.build import build as run_build
    from pim.engine.errors import PimError
    from pim.engine.config.spec import load_config
    from pim.engine.config.units import human_size
    from pim.engine.interrupt import Interrupted, unwinding
    from pim.engine.remote import open_remote

    # SIGTERM unwinds like Ctrl-C: QEMU stopped, runtime files and scratch removed.
    with event_stream(json_out, verbose) as events, unwinding():
        try:
            cfg = load_config(config)
            result = run_build(cfg, image, events, force=force, store=open_store(),
                               remote=open_remote(cfg, enabled=not no_remote))
        except PimError as e:
            if json_out:
                events.emit("result", None, str(e), ok=False, exit_code=e.exit_code)
            raise fail(e) from None
        except KeyboardInterrupt as e:
            code = e.exit_code if isinstance(e, Interrupted) else 130
            if json_out:
                events.emit("result", None, "interrupted", ok=False, exit_code=code)
            typer.echo("interrupted: the VM was stopped and nothing was published", err=True)
            raise typer.Exit(code) from None
        summary = {
            "image": result.image, "path": str(result.path), "sha256": result.sha256, "size": result.size,
            "key": result.key, "manifest": str(result.manifest_path), "cached": result.cached,
        }
        if json_out:
            events.emit("result", None, "built", ok=True, **summary)
        else:
            how = "cached" if result.cached else "built"
            typer.echo(f"{result.image}: {how} {human_size(result.size)} sha256 {result.sha256[:16]}…", err=True)
            typer.echo(str(result.path))
