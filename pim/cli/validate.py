"""`pim validate` and `pim schema`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pim.cli.main import ConfigOpt, fail


def validate(config: Path = ConfigOpt) -> None:
    """Check a config; list every problem with its path and the rule it broke."""
    from pim.engine.errors import PimError
    from pim.engine.spec import load_config

    try:
        cfg = load_config(config)
    except PimError as e:
        raise fail(e) from None
    typer.echo(f"{config}: OK ({len(cfg.images)} image(s): {', '.join(sorted(cfg.images))})", err=True)


def schema() -> None:
    """Print the JSON Schema of pim.yaml."""
    from pim.engine.spec import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))
