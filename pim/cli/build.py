"""`pim build`: one image in this process; several side by side, each in its own
`pim build IMAGE --json` child whose events are shown here under the image's name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from pim.cli.common import ConfigOpt, fail, open_store


def build(
    images: list[str] = typer.Argument(None, help="Image names from the config (several build side by side)"),
    config: Path = ConfigOpt,
    all_images: bool = typer.Option(False, "--all", help="Build every image of the config"),
    force: bool = typer.Option(False, "--force", help="Ignore cached stages and build everything again"),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON event per line on stdout"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the VM's console too"),
    no_remote: bool = typer.Option(False, "--no-remote-cache", help="Neither pull from nor push to the remote cache"),
    builder: str = typer.Option(None, "--builder", help="Build on this builder (see `pim builders list`)"),
    local: bool = typer.Option(False, "--local", help="Build on this machine, whatever the routing says"),
    no_fetch: bool = typer.Option(False, "--no-fetch", help="Leave a remote build's artifact on its builder"),
    explain: bool = typer.Option(False, "--explain", help="Build nothing: say per stage whether it is cached and, "
                                                          "if not, which inputs changed since the newest build"),
) -> None:
    """Build images: install, provision, generalize, compress; routed to a builder."""
    from pim.engine.config.spec import load_config
    from pim.engine.errors import PimError

    try:
        cfg = load_config(config)
    except PimError as e:
        raise fail(e) from None
    names = list(dict.fromkeys(list(cfg.images) if all_images else (images or [])))  # each image once
    if not names:
        raise typer.BadParameter("name an image to build, or give --all")
    if explain:
        raise typer.Exit(_explain(cfg, names, json_out))
    flags = {"force": force, "no_remote": no_remote, "builder": builder, "local": local, "no_fetch": no_fetch}
    if len(names) == 1:
        _one(cfg, names[0], json_out, verbose, **flags)
    else:
        from pim.cli.parallel import build_many

        raise typer.Exit(build_many(config, names, json_out, verbose, **flags))


def _explain(cfg: Any, names: list[str], json_out: bool) -> int:
    """Print each image's stages, cached or to build and why; 0 when nothing would be built, 3 when something would."""
    import json
    from dataclasses import asdict

    from pim.engine.errors import PimError
    from pim.engine.pipeline.build import explain_image

    store, report = open_store(), {}
    for name in names:
        try:
            report[name] = explain_image(cfg, name, store)
        except PimError as e:
            raise fail(e) from None
    if json_out:
        typer.echo(json.dumps({n: [asdict(s) for s in stages] for n, stages in report.items()}, indent=2))
    else:
        for name, stages in report.items():
            typer.echo(f"{name}:")
            for s in stages:
                typer.echo(f"  {s.line()}")
    return 3 if any(s.to_build for stages in report.values() for s in stages) else 0


def _one(cfg: Any, image: str, json_out: bool, verbose: bool, *, force: bool, no_remote: bool,
         builder: str | None, local: bool, no_fetch: bool) -> None:
    from pim.cli.render import event_stream
    from pim.engine import builders as buildersmod
    from pim.engine.config.units import human_size
    from pim.engine.errors import PimError
    from pim.engine.interrupt import Interrupted, unwinding
    from pim.engine.remote import open_remote

    # SIGTERM unwinds like Ctrl-C: QEMU stopped, runtime files and scratch removed.
    with event_stream(json_out, verbose) as events, unwinding():
        try:
            store = open_store()
            result = buildersmod.build(cfg, image, events, store=store, builders=buildersmod.load(cfg),
                                       remote=open_remote(cfg, enabled=not no_remote), force=force,
                                       override=builder, force_local=local, fetch=False if no_fetch else None)
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
            "builder": result.builder,
        }
        if json_out:
            events.emit("result", None, "built", ok=True, **summary)
        else:
            how = "cached" if result.cached else "built"
            where = "" if result.builder == "local" else f" on {result.builder}"
            typer.echo(f"{result.image}: {how}{where} {human_size(result.size)} sha256 {result.sha256[:16]}…",
                       err=True)
            typer.echo(f"{result.builder}:{result.path}" if result.kept_on_builder else str(result.path))
