"""`pim deploy IMAGE --target NAME [--delete | --check]`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from pim.cli.common import ConfigOpt, fail, open_store


def deploy(
    image: str = typer.Argument(..., help="Image name from the config; its newest build is deployed"),
    target: str = typer.Option(..., "--target", "-t", help="Target name from the config's targets"),
    config: Path = ConfigOpt,
    delete: bool = typer.Option(False, "--delete", help="Remove the deployment (template or AMIs) instead"),
    check: bool = typer.Option(False, "--check", help="Only tell whether the deployment exists (exit 1 if not)"),
    key: Optional[str] = typer.Option(None, "--key", help="Build key to delete or check (default: the newest build)"),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON event per line on stdout"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every API call"),
) -> None:
    """Deploy the newest build of an image as a Proxmox template or AWS AMI(s); idempotent."""
    from pim.cli.render import event_stream
    from pim.engine import deploy as engine
    from pim.engine.errors import PimError, Problem, SpecError
    from pim.engine.config.spec import load_config

    with event_stream(json_out, verbose) as events:
        outcome: dict | None = None
        try:
            cfg = load_config(config)
            if target not in cfg.targets:
                known = ", ".join(sorted(cfg.targets)) or "none"
                raise SpecError(str(config), [Problem(f"targets.{target}", f"no such target; defined: {known}")])
            spec = cfg.targets[target]
            if key:
                built = engine.BuiltImage.by_key(image, key)
            else:
                cfg.image(image)
                built = engine.BuiltImage.newest(open_store(), image)
            if delete:
                removed = engine.delete(spec, built, events, base_dir=cfg.base_dir)
                outcome = {"target": target, "image": image, "key": built.key, "removed": removed}
            elif check:
                found = engine.exists(spec, built, events, target_name=target, base_dir=cfg.base_dir)
                outcome = found.to_json() if found else None
            else:
                outcome = engine.deploy(spec, built, events, target_name=target, base_dir=cfg.base_dir).to_json()
        except PimError as e:
            if json_out:
                events.emit("result", None, str(e), ok=False, exit_code=e.exit_code)
            raise fail(e) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: whatever this deploy had created was removed", err=True)
            raise typer.Exit(130) from None
        if check and outcome is None:
            if json_out:
                events.emit("result", None, "not deployed", ok=False, exists=False)
            else:
                typer.echo(f"{image}: not deployed on {target} (or drifted)", err=True)
            raise typer.Exit(1)
        if json_out:
            events.emit("result", None, "deployed" if not delete else "deleted", ok=True, **(outcome or {}))
            return
        typer.echo(_summary(outcome or {}, delete), err=True)
        typer.echo(json.dumps(outcome, indent=2))


def _summary(outcome: dict, deleted: bool) -> str:
    if deleted:
        return f"{outcome['image']}: removed {len(outcome['removed'])} resource(s) from {outcome['target']}"
    res = outcome["resources"]
    how = "created" if outcome["created"] else "already there"
    if outcome["type"] == "proxmox":
        vmids = res.get("vmids") or {res["node"]: res["vmid"]}
        return f"{outcome['image']}: " + ", ".join(f"template {v} on {n}" for n, v in vmids.items()) + f" ({how})"
    amis = ", ".join(f"{r}: {v['ami']}" for r, v in res["regions"].items())
    return f"{outcome['image']}: {amis} ({how})"
