"""Entry point: `pim` subcommands. Exit codes: 0 success, 1 build failure, 2 bad input."""

from __future__ import annotations

import os
import sys

# pydantic looks for plugins in every installed distribution's entry points when the
# first model is built (pydantic.plugin._loader: about 12 ms here). PIM's command line
# uses none; a user who wants one names it (pydantic's docs: PYDANTIC_DISABLE_PLUGINS).
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

if sys.argv[1:2] == ["build"] and "--explain" not in sys.argv:
    # A build that runs a guest needs the accelerator verdict: when none is remembered
    # since the host booted, its probe guests run while the modules and the config load.
    from pim.engine.qemu import accel

    accel.prefetch()

import typer  # noqa: E402

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Build cloud-init-ready qcow2 images from installer ISOs with QEMU.")

def _register() -> None:
    from pim.cli import build, builders, cache, deploy, doctor, images, tofu, validate, vm

    app.command("build")(build.build)
    app.command("deploy")(deploy.deploy)
    app.command("validate")(validate.validate)
    app.command("schema")(validate.schema)
    app.command("doctor")(doctor.doctor)
    app.command("route")(builders.route)
    app.command("agent", hidden=True)(builders.agent)
    app.add_typer(builders.app, name="builders", help="List and check the machines that build")
    app.add_typer(vm.app, name="vm", help="Inspect and control running build VMs")
    app.add_typer(images.app, name="images", help="List, inspect, remove and garbage-collect built images")
    app.add_typer(cache.app, name="cache", help="Housekeeping of the shared remote build cache")
    app.add_typer(tofu.app, name="tofu", help="Terraform / OpenTofu helpers (external data source)")


def main() -> None:
    _register()
    app()


if __name__ == "__main__":
    main()
