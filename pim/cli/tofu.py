"""`pim tofu external`: Terraform / OpenTofu's external data source program."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False)


@app.command("external")
def external() -> None:
    """Answer a `data "external"` query: JSON of strings on stdin -> flat JSON of strings on stdout.

    Query keys: config, image, target, mode (lookup | build), cache_dir. See examples/tofu.
    """
    from pim.tofu.external import main

    code = main(sys.stdin, sys.stdout, sys.stderr)
    if code:
        raise typer.Exit(code)


@app.command("mirror")
def mirror(directory: Path = typer.Argument(..., help="The filesystem mirror's folder (created if missing)")) -> None:
    """Install the pim provider into a filesystem mirror and print the CLI config that uses it."""
    from pim.tofu import mirror as m

    try:
        exe = m.install(directory.resolve())
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(1) from None
    print(f"installed {exe}", file=sys.stderr)
    print(f"# in ~/.terraformrc (or $TF_CLI_CONFIG_FILE); then `terraform init` finds {m.SOURCE}", file=sys.stderr)
    print(m.cli_config(directory.resolve()), end="")
