"""Acceptance runs of real installers: the netinst ISO (cached between runs), a
PIM cache and runtime folder of their own, and the wall time of every stage,
printed in the test report."""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from pathlib import Path
from typing import Iterator

import pytest

HERE = Path(__file__).resolve().parent
FIXTURE_CACHE = Path(os.environ.get("PIM_TEST_FIXTURES", Path.home() / ".cache" / "pim-test-fixtures"))
_TIMES: list[tuple[str, str, float]] = []  # (test, stage, seconds)


def load_script(path: Path):
    """A stdlib-only script of the test suite, imported by path."""
    spec = importlib.util.spec_from_file_location(path.stem.replace("-", "_"), path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class StageTimes:
    def __init__(self, test: str):
        self.test = test

    def record(self, stage: str, seconds: float) -> None:
        _TIMES.append((self.test, stage, seconds))
        print(f"[stage] {stage}: {seconds:.1f}s", flush=True)


@pytest.fixture
def stage_times(request: pytest.FixtureRequest) -> StageTimes:
    return StageTimes(request.node.name)


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if not _TIMES:
        return
    terminalreporter.section("acceptance: wall time of each stage")
    for test, stage, seconds in _TIMES:
        terminalreporter.write_line(f"{test}: {stage:<48} {seconds:7.1f}s")


@pytest.fixture(scope="session")
def _netinst_timed() -> tuple[Path, float]:
    for tool in ("qemu-system-x86_64", "xorriso", "apt-get", "dpkg-deb"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is missing: run `make acceptance`, which installs what the tests need")
    started = time.monotonic()
    iso = load_script(HERE / "netinst.py").build_netinst_iso(FIXTURE_CACHE)
    return iso, time.monotonic() - started


@pytest.fixture
def netinst_iso(_netinst_timed: tuple[Path, float], stage_times: StageTimes) -> Path:
    """Debian 12's installer as a netinst-layout ISO (download and assembly timed once per session)."""
    iso, seconds = _netinst_timed
    stage_times.record("installer package + ISO assembly (cached after the first run)", seconds)
    return iso


@pytest.fixture(scope="session")
def netinst_iso_arm64() -> Path:
    """Debian 12's arm64 installer in the arm64 netinst layout (/install.a64/)."""
    if not shutil.which("qemu-system-aarch64"):
        pytest.fail("qemu-system-aarch64 is missing: run `make acceptance`, which installs qemu-system-arm")
    return load_script(HERE / "netinst.py").build_netinst_iso(FIXTURE_CACHE, "aarch64")


@pytest.fixture
def pim_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Path]]:
    dirs = {"cache": tmp_path / "pim-cache", "runtime": tmp_path / "xdg-runtime"}
    for d in dirs.values():
        d.mkdir()
    monkeypatch.setenv("PIM_CACHE_DIR", str(dirs["cache"]))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(dirs["runtime"]))
    yield dirs
