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
    (`PimError.exit_code`: 1 build failure, 2 bad input), 1 for anything else."""
    from pim.engine.errors import PimError

    print(f"error: {err}", file=sys.stderr)
    return typer.Exit(err.exit_code if isinstance(err, PimError) else 1)


def open_store():  # type: ignore[no-untyped-def]
    """The store every verb uses: $PIM_CACHE_DIR, else $XDG_CACHE_HOME/pim, else
    ~/.cache/pim (read here, at the edge, and passed to the engine)."""
    from pim.engine.paths import cache_dir
    from pim.engine.store.objects import Store

    return Store(cache_dir())
