"""What the CLI verbs share: the `--config` option and the error-to-exit-code rule.

Verbs import this module, never `pim.cli.main`, so the app and its verbs form no
import cycle.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

ConfigOpt = typer.Option(Path("pim.yaml"), "--config", "-c", help="The pim.yaml to read")


def fail(err: BaseException) -> "typer.Exit":
    """Print an engine error on stderr; the exit code comes from its type
    (`PimError.exit_code`: 1 build failure, 2 bad input), 1 for anything else.

    Notes on the error or on the errors it was raised from (how often a retry policy
    tried before giving up, pim.engine.retry) follow it, one per line."""
    from pim.engine.errors import PimError

    print(f"error: {err}", file=sys.stderr)
    for note in _notes(err):
        print(f"  {note}", file=sys.stderr)
    return typer.Exit(err.exit_code if isinstance(err, PimError) else 1)


def _notes(err: BaseException) -> list[str]:
    """Exception notes of err and of the chain under it (cause or context), each once."""
    notes: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen and len(seen) < 8:
        seen.add(id(current))
        notes += [n for n in getattr(current, "__notes__", []) if n not in notes]
        current = current.__cause__ or current.__context__
    return notes


def open_store():  # type: ignore[no-untyped-def]
    """The store every verb uses: $PIM_CACHE_DIR, else $XDG_CACHE_HOME/pim, else
    ~/.cache/pim (read here, at the edge, and passed to the engine)."""
    from pim.engine.paths import cache_dir
    from pim.engine.store.objects import Store

    return Store(cache_dir())


def open_remote_cache(config: Path):  # type: ignore[no-untyped-def]
    """The remote cache named by `config` (when that file exists) over the per-user
    config; raises InputError saying where to configure one when neither does."""
    from pim.engine.config.spec import load_config
    from pim.engine.errors import InputError
    from pim.engine.paths import user_config_file
    from pim.engine.remote import open_remote

    bucket = open_remote(load_config(config) if config.is_file() else None)
    if bucket is None:
        raise InputError(f"no remote cache is configured: add `cache: {{remote: s3://bucket/prefix}}` to "
                         f"{config} or to {user_config_file()}")
    return bucket
