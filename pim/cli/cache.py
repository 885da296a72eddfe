"""`pim cache prune --remote`: housekeeping of the shared build cache."""

from __future__ import annotations

from pathlib import Path

import typer

from pim.cli.common import ConfigOpt, fail, open_remote_cache

app = typer.Typer(no_args_is_help=True)


@app.command()
def prune(
    remote: bool = typer.Option(False, "--remote", help="Prune the remote cache (this machine's: `pim images gc`)"),
    older_than: str = typer.Option("30d", "--older-than", help="Keep whatever was pushed more recently (30d, 12h)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only show what would be removed"),
    config: Path = ConfigOpt,
) -> None:
    """Remove remote objects older than --older-than that no image's newest build uses."""
    from pim.engine.config.units import human_size
    from pim.engine.errors import InputError, PimError
    from pim.engine.remote.admin import prune as run_prune

    try:
        if not remote:
            raise InputError("this machine's store is pruned by `pim images gc`; add --remote for the remote cache")
        seconds = _age(older_than)
        report = run_prune(open_remote_cache(config), seconds, dry_run=dry_run)
    except PimError as e:
        raise fail(e) from None
    verb = "would remove" if dry_run else "removed"
    for e in report.removed:
        typer.echo(f"{verb} {e.key[:12]} {e.stage:10} {e.image or '-':20} {human_size(e.size)}")
    aborted = f"; {report.aborted} unfinished upload(s) aborted" if report.aborted else ""
    typer.echo(f"{verb} {len(report.removed)} object(s) and {report.blobs} blob(s), {human_size(report.bytes)}"
               f"{aborted}", err=True)


def _age(text: str) -> float:
    """Seconds from '30d' (days) or a duration as pim.yaml writes one ('12h', '90m')."""
    import re

    from pim.engine.config.units import parse_duration
    from pim.engine.errors import InputError

    days = re.fullmatch(r"(\d+(?:\.\d+)?)d", text.strip())
    if days:
        return float(days[1]) * 86400
    try:
        return parse_duration(text)
    except ValueError as e:
        raise InputError(f"--older-than: {e}, or days as '30d'") from None
