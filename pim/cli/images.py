"""`pim images list|show|verify|rm|gc`: what the store holds."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any, Callable

import typer

from pim.cli.common import ConfigOpt, fail, open_remote_cache, open_store

app = typer.Typer(no_args_is_help=True)


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


@app.command("list")
def list_(json_out: bool = typer.Option(False, "--json"),
          remote: bool = typer.Option(False, "--remote", help="List the remote cache instead of this machine's"),
          config: Path = ConfigOpt) -> None:
    """Built images and stages: key, image, size, last used (pushed, for --remote), and
    whether it is kept by gc (by `pim cache prune --remote`)."""
    from pim.engine.errors import PimError
    from pim.engine.store.inventory import entries, remote_entries

    if not remote:
        store = open_store()
        _table(entries(store) + remote_entries(store), json_out, "LAST USED",
               lambda e: (e.kind, e.image, e.size, _when(e.last_used), e.referenced))
        return
    from pim.engine.remote.admin import entries as remote_entries

    try:
        items = remote_entries(open_remote_cache(config))
    except PimError as e:
        raise fail(e) from None
    _table(items, json_out, "PUSHED (UTC)",
           lambda e: (e.stage, e.image, e.size, e.pushed.strftime("%Y-%m-%d %H:%M"), e.kept))


def _table(items: list[Any], json_out: bool, when: str, row: Callable[[Any], tuple[str, str | None, int, str, bool]]) -> None:
    """One line per entry (key, kind, image, size, `when`, kept), or the entries as JSON."""
    from pim.engine.config.units import human_size

    if json_out:
        typer.echo(json.dumps([e.to_json() for e in items], indent=2))
        return
    typer.echo(f"{'KEY':14}{'KIND':11}{'IMAGE':20}{'SIZE':>11}  {when:17}{'KEPT':6}WHERE")
    for e in items:
        kind, image, size, at, kept = row(e)
        where = getattr(e, "location", None)  # entries of the remote cache have none: they are in the bucket
        where = "bucket" if where is None else "here" if where == "local" else f"builder {where}: {e.path}"
        typer.echo(f"{e.key[:12]:14}{kind:11}{(image or '-'):20}{human_size(size):>11}  {at:17}"
                   f"{'yes' if kept else 'no':6}{where}")


@app.command()
def show(ref: str = typer.Argument(..., help="Image name (its newest build) or key prefix")) -> None:
    """The manifest of a build: inputs, keys, lineage, sizes, timings."""
    from pim.engine.errors import PimError
    from pim.engine.store.inventory import find

    try:
        store = open_store()
        manifest = store.manifest(find(store, ref).key)
    except PimError as e:
        raise fail(e) from None
    typer.echo(manifest.model_dump_json(indent=2))


@app.command()
def verify(ref: str = typer.Argument(..., help="Image name (its newest build) or key prefix"),
           key: Path = typer.Option(None, "--key", help="PEM public key to check the signature with "
                                                        "(default: this machine's signing key)")) -> None:
    """Check a build's signed provenance: signature, artifact and SBOM digests, and that
    the recorded inputs hash to the image's key. Exit 1 when anything does not hold."""
    from pim.engine.errors import PimError
    from pim.engine.provenance import signing
    from pim.engine.provenance.verify import verify as run_verify
    from pim.engine.store.inventory import find

    try:
        store = open_store()
        entry = find(store, ref)
        public = key or signing.verifying_key_path()
        if key is None and not public.is_file():
            raise PimError(f"no public key at {public}: this machine has signed no build; give the signer's "
                           "key with --key")
        done = run_verify(store.object(entry.key), store.manifest(entry.key), signing.load_public(public))
    except PimError as e:
        raise fail(e) from None
    typer.echo(f"verified {entry.key[:12]} ({entry.image}): signed by {done.keyid[:16]}, artifact sha256 "
               f"{done.artifact_sha256[:16]}, SBOM {(done.sbom_sha256 or 'none')[:16]}, "
               f"{done.dependencies} inputs")


@app.command()
def rm(ref: str = typer.Argument(..., help="Image name or key prefix")) -> None:
    """Remove one built image or stage from the store."""
    from pim.engine.errors import PimError
    from pim.engine.store.inventory import find, remove

    store = open_store()
    try:
        entry = find(store, ref)
        remove(store, entry)
    except PimError as e:
        raise fail(e) from None
    typer.echo(f"removed {entry.key[:12]} ({entry.kind} of {entry.image})", err=True)


@app.command()
def gc(dry_run: bool = typer.Option(False, "--dry-run", help="Only show what would be removed")) -> None:
    """Remove everything the newest build of each named image does not use."""
    from pim.engine.store.inventory import gc as run_gc
    from pim.engine.config.units import human_size

    doomed, in_use = run_gc(open_store(), dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for e in doomed:
        typer.echo(f"{verb} {e.key[:12]} {e.kind:8} {e.image or '-':20} {human_size(e.size)}")
    for e in in_use:
        typer.echo(f"kept {e.key[:12]} {e.kind:8} {e.image or '-':20} in use by a running build", err=True)
    typer.echo(f"{verb} {len(doomed)} object(s), {human_size(sum(e.size for e in doomed))}"
               + (f"; skipped {len(in_use)} in use" if in_use else ""), err=True)
