"""`pim route`, `pim builders list|check`, and `pim agent` (what a client runs over SSH)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pim.cli.common import ConfigOpt, fail

app = typer.Typer(no_args_is_help=True)


def _load(config: Path):  # type: ignore[no-untyped-def]
    from pim.engine.builders import load
    from pim.engine.config.spec import load_config

    cfg = load_config(config) if config.is_file() else None
    return cfg, load(cfg)


def route(image: str = typer.Argument(..., help="Image name from the config"), config: Path = ConfigOpt,
          builder: str = typer.Option(None, "--builder", help="Route as if --builder NAME were given"),
          local: bool = typer.Option(False, "--local", help="Route as if --local were given"),
          json_out: bool = typer.Option(False, "--json")) -> None:
    """Where `pim build IMAGE` would build, with which accelerator, and why."""
    from pim.engine.builders import decide
    from pim.engine.errors import PimError

    try:
        cfg, builders = _load(config)
        if cfg is None:
            raise typer.BadParameter(f"{config} does not exist")
        chosen = decide(cfg, image, builders, override=builder, force_local=local)
    except PimError as e:
        raise fail(e) from None
    if json_out:
        typer.echo(json.dumps(chosen.to_json()))
        return
    typer.echo(f"{image}: {chosen.builder.name} ({chosen.builder.address}) under {chosen.accel}")
    typer.echo(f"  because {chosen.reason}")
    if chosen.warning:
        typer.echo(f"  warning: {chosen.warning}")


@app.command("list")
def list_(config: Path = ConfigOpt, json_out: bool = typer.Option(False, "--json")) -> None:
    """The configured builders: address, systems, max_jobs, speed_factor (no connection)."""
    from pim.engine.errors import PimError

    try:
        _, builders = _load(config)
    except PimError as e:
        raise fail(e) from None
    if json_out:
        typer.echo(json.dumps([b.to_json() for b in builders.values()], indent=2))
        return
    typer.echo(f"{'NAME':16}{'ADDRESS':32}{'SYSTEMS':28}{'JOBS':>5}{'SPEED':>7}")
    for b in builders.values():
        systems = ", ".join(f"{a}:{x}" for a, x in b.systems.items()) or "this host (probed)"
        typer.echo(f"{b.name:16}{b.address:32}{systems:28}{b.max_jobs:>5}{b.speed_factor:>7g}")


@app.command()
def check(config: Path = ConfigOpt, json_out: bool = typer.Option(False, "--json"),
          name: list[str] = typer.Argument(None, help="Only these builders")) -> None:
    """Connect to each builder: reachable, PIM version, accelerator verdicts, free
    disk, builds running. Exit status 1 when one is not usable."""
    from pim.engine.builders.check import check_all
    from pim.engine.config.units import human_size
    from pim.engine.errors import PimError

    try:
        _, builders = _load(config)
        if name:
            unknown = sorted(set(name) - set(builders))
            if unknown:
                raise typer.BadParameter(f"no builder named {', '.join(unknown)}; see `pim builders list`")
            builders = {n: b for n, b in builders.items() if n in name}
        reports = check_all(builders)
    except PimError as e:
        raise fail(e) from None
    if json_out:
        typer.echo(json.dumps(reports, indent=2))
    else:
        for r in reports:
            if not r["ok"]:
                typer.echo(f"{r['name']:16}UNUSABLE  {r['error']}")
                continue
            accel = ", ".join(f"{a}:{v}" for a, v in r["accel"].items())
            typer.echo(f"{r['name']:16}ok  PIM {r['version']}  {accel}  free {human_size(r['free_bytes'])}  "
                       f"running {r['running']}/{r['max_jobs']}  ({r['seconds']:.1f} s)")
            if r.get("warning"):
                typer.echo(f"{'':16}warning: {r['warning']}")
    if not all(r["ok"] for r in reports):
        raise typer.Exit(1)


def agent(op: str = typer.Argument(..., help="info | build")) -> None:
    """The builder's side of a remote build (a client runs this over SSH)."""
    from pim.engine.builders.agent import main

    raise typer.Exit(main(op))
