"""qemu-img operations: create disks and overlays, inspect, flatten and compress.

Each runs qemu-img through pim.engine.run: a failure raises CommandError, a
missing qemu-img MissingTool (install the Debian package qemu-utils).
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path
from typing import Any

from pim.engine.errors import CommandError, MissingTool
from pim.engine.run import run


def create(path: Path, size: int, backing: Path | None = None) -> None:
    argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing is not None:
        argv += ["-b", str(backing), "-F", "qcow2"]
    run(argv + [str(path), str(size)])


def rebase_unsafe(path: Path, backing: Path) -> None:
    """Point qcow2 overlay `path` at `backing` by rewriting its header only (`qemu-img
    rebase -u`): for a backing file that moved, with the same bytes. Raises CommandError."""
    run(["qemu-img", "rebase", "-u", "-f", "qcow2", "-b", str(backing), "-F", "qcow2", str(path)])


def info(path: Path) -> dict[str, Any]:
    return json.loads(run(["qemu-img", "info", "--output=json", "-U", str(path)]).stdout)


@functools.cache
def supports_zstd() -> bool:
    """True when this qemu-img can write zstd-compressed qcow2 clusters."""
    with tempfile.TemporaryDirectory(prefix="pim-zstd-") as tmp:
        try:
            run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "compression_type=zstd", f"{tmp}/t.qcow2", "1M"])
        except CommandError:
            return False
    return True


def resolve_compression(requested: str) -> str:
    if requested == "auto":
        return "zstd" if supports_zstd() else "zlib"
    return requested


def convert(src: Path, dst: Path, compression: str) -> None:
    """Flatten src (and its backing chain) into a standalone, optionally compressed qcow2.

    `-W` lets qemu-img's coroutines write clusters as they are ready instead of in
    order, so compression runs on every core: the virtual disk is the same, only
    the clusters' order in the file differs (qemu-img(1), convert -W). Measured on
    the fixture image with zstd: 1.85 s in order, 1.2 s with -W, on 2 cores.
    """
    argv = ["qemu-img", "convert", "-W", "-O", "qcow2"]
    if compression != "none":
        argv.append("-c")
        if compression == "zstd":
            argv += ["-o", "compression_type=zstd"]
    run(argv + [str(src), str(dst)])


def version() -> str:
    out = run(["qemu-img", "--version"]).stdout.splitlines()
    return out[0] if out else "unknown"


@functools.cache
def qemu_version(arch: str) -> str:
    """The system emulator's version line (saved machine states only load into the same build)."""
    from pim.engine.qemu.argv import qemu_binary

    try:
        out = run([qemu_binary(arch), "--version"]).stdout.splitlines()
    except (CommandError, MissingTool, OSError):
        return "unknown"
    return out[0] if out else "unknown"


def qemu_release(arch: str) -> tuple[int, int] | None:
    """(major, minor) of the system emulator for `arch`, from `qemu_version`; None when unknown."""
    return release_of(qemu_version(arch))


def release_of(version_line: str) -> tuple[int, int] | None:
    """(major, minor) from a `qemu-system-* --version` line; None when it has none."""
    import re

    m = re.search(r"version (\d+)\.(\d+)", version_line)
    return (int(m[1]), int(m[2])) if m else None
