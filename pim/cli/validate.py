"""`pim validate` and `pim schema`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pim.cli.common import ConfigOpt, fail


def validate(config: Path = ConfigOpt) -> None:
    """Check a config and its answer files; list every problem with its path and the rule it broke."""
    from pim.engine.builders import load
    from pim.engine.errors import PimError, Problem, SpecError
    from pim.engine.installers.prepare import check_answers
    from pim.engine.config.spec import load_config

    try:
        cfg = load_config(config)
        notes: list[str] = []
        problems = [p for name in sorted(cfg.images) for p in check_answers(cfg, name, notes)]
        builders = load(cfg)
        problems += [Problem(f"images.{name}.builder", f"no builder named {spec.builder!r} (configured: "
                                                       f"{', '.join(sorted(builders))}); declare it under builders: "
                                                       "in pim.yaml or the per-user builders.yaml")
                     for name, spec in sorted(cfg.images.items()) if spec.builder and spec.builder not in builders]
        for note in notes:  # which checks ran and how; warnings
            typer.echo(note, err=True)
        if problems:
            raise SpecError(str(config), problems)
    except PimError as e:
        raise fail(e) from None
    typer.echo(f"{config}: OK ({len(cfg.images)} image(s): {', '.join(sorted(cfg.images))})", err=True)


def schema() -> None:
    """Print the JSON Schema of pim.yaml."""
    from pim.engine.config.spec import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))
