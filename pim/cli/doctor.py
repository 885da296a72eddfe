"""`pim doctor`: what this host has for building images."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer

from pim.cli.common import ConfigOpt


def doctor(fresh: bool = typer.Option(False, "--fresh", help="Probe accelerators again instead of the remembered verdict"),
           config: Path = ConfigOpt) -> None:
    """Check QEMU binaries, the accelerator (by a real probe), firmware, free disk and the remote cache."""
    from pim.engine.qemu import firmware
    from pim.engine.paths import cache_dir
    from pim.engine.qemu import accel
    from pim.engine.qemu.argv import qemu_binary
    from pim.engine.errors import MissingTool
    from pim.engine.platforms import install_hint
    from pim.engine.run import find_tool, run
    from pim.engine.config.units import human_size

    ok, found = True, set()
    for tool in (qemu_binary("x86_64"), qemu_binary("aarch64"), "qemu-img"):
        try:
            path = find_tool(tool)  # PATH, then Homebrew's folders on macOS
        except MissingTool as e:
            typer.echo(f"--    {tool}: not found ({install_hint(tool, e.package).removeprefix('install it: ')})")
            ok = ok and tool != "qemu-img"
            continue
        found.add(tool)
        version = run([path, "--version"], check=False).stdout.splitlines()[0]
        typer.echo(f"ok    {tool}: {path} ({version})")
    for arch in ("x86_64", "aarch64"):
        if qemu_binary(arch) not in found:
            continue
        verdict = accel.choose(arch, fresh=fresh)
        typer.echo(f"ok    accelerator for {arch}: {verdict.accel} — {verdict.reason}")
        for name, what in verdict.tried.items():
            typer.echo(f"        {name}: {what}")
    for arch in firmware.discover():
        found = firmware.locate(arch)
        if found:
            typer.echo(f"ok    UEFI firmware for {arch}: {found.firmware.code} (vars template {found.firmware.vars}; "
                       f"from {found.source})")
        else:
            what = "BIOS builds still work" if arch == "x86_64" else f"{arch} images cannot be built here"
            typer.echo(f"--    UEFI firmware for {arch}: not found ({what})")
    cache = cache_dir()
    free = shutil.disk_usage(cache).free
    mark = "ok  " if free > 20 << 30 else "warn"
    typer.echo(f"{mark}  cache {cache}: {human_size(free)} free")
    ok = _remote_cache(config) and ok
    if not ok:
        raise typer.Exit(1)


def _remote_cache(config: Path) -> bool:
    """The remote cache, when one is configured: reachable, writable. False on failure."""
    from pim.engine.config.spec import load_config
    from pim.engine.errors import PimError
    from pim.engine.remote import open_remote
    from pim.engine.remote.admin import check

    try:
        bucket = open_remote(load_config(config) if config.is_file() else None)
        if bucket is None:
            typer.echo("--    remote cache: none configured (cache: in pim.yaml or ~/.config/pim/config.yaml)")
            return True
        typer.echo(f"ok    remote cache {check(bucket)}")
    except PimError as e:
        typer.echo(f"FAIL  remote cache: {e}")
        return False
    return True
