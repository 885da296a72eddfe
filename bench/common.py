"""Shared set-up for benchmarks: the fixture ISO and a config for it."""

from __future__ import annotations

import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Builds sign their provenance with a key kept in PIM's config directory: benchmarks
# make theirs in a folder of their own, never in the user's.
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="pim-bench-config-")

from tests.e2e.conftest import FIXTURE_CACHE, make_config  # noqa: E402

__all__ = ["ROOT", "fixture_iso", "make_config", "timed", "pim", "median_of"]


def fixture_iso(arch: str = "x86_64") -> Path:
    """The e2e fixture installer ISO for arch (x86_64, aarch64), built and cached on first use."""
    spec = importlib.util.spec_from_file_location("fixture", ROOT / "tests/fixtures/installer/build.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build_fixture_iso(FIXTURE_CACHE, arch)


def pim(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run the real `pim` CLI (Python start-up included, as a user pays it)."""
    exe = Path(sys.executable).with_name("pim")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env={**os.environ, **env}, check=True)


def timed(fn) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median_of(n: int, fn) -> float:  # type: ignore[no-untyped-def]
    return statistics.median(timed(fn)[0] for _ in range(n))
