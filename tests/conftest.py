"""Hermetic tests: the suite never touches the user's PIM cache, config or runtime files.

Before anything is collected, the session points XDG_CACHE_HOME, XDG_CONFIG_HOME and
XDG_RUNTIME_DIR into a temporary folder of its own and drops PIM_CACHE_DIR, so PIM
code run in-process and every `pim` subprocess that inherits the environment keeps
its cache and runtime files there. The machine-wide fixture ISO cache
(`PIM_TEST_FIXTURES`, default ~/.cache/pim-test-fixtures) is not under XDG and
persists between runs, as it should.

At the end the run fails if the user's cache (~/.cache/pim, and $XDG_CACHE_HOME/pim
as the user had it) was created or changed, or if a test left the environment or
the working directory changed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

_ISOLATED = ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_RUNTIME_DIR")
_DROPPED = ("PIM_CACHE_DIR",)
_STATE = pytest.StashKey[dict]()


def user_caches(environ: dict[str, str]) -> list[Path]:
    """The PIM caches of the user the suite runs as: ~/.cache/pim and $XDG_CACHE_HOME/pim."""
    caches = [Path.home() / ".cache" / "pim"]
    if environ.get("XDG_CACHE_HOME"):
        caches.append(Path(environ["XDG_CACHE_HOME"]) / "pim")
    return list(dict.fromkeys(caches))


def fingerprint(folder: Path) -> dict[str, tuple[int, int]] | None:
    """{relative path: (size, mtime_ns)} of a folder and everything under it; None when absent."""
    if not folder.exists():
        return None
    found = {".": (0, folder.stat().st_mtime_ns)}
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            path = Path(root) / name
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            found[str(path.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return found


def _changes(before: dict | None, after: dict | None) -> str:
    if before is None:
        return "created" if after is not None else ""
    if after is None:
        return "removed"
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    return f"changed: {', '.join(changed[:5])}{' …' if len(changed) > 5 else ''}" if changed else ""


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):  # an xdist worker: the controller isolated the environment
        return
    caches = user_caches(_environ())
    root = Path(tempfile.mkdtemp(prefix="pim-tests-"))
    patch = pytest.MonkeyPatch()
    for name in _ISOLATED:
        folder = root / name.lower()
        folder.mkdir(mode=0o700)
        patch.setenv(name, str(folder))
    for name in _DROPPED:
        patch.delenv(name, raising=False)
    config.stash[_STATE] = {
        "root": root, "patch": patch, "caches": {c: fingerprint(c) for c in caches},
        "environ": _environ(), "cwd": os.getcwd(),
    }


# What `make test` holds on disk at its peak (12.4 GiB measured; images, stage objects, fakes' uploads in
# the temporary folder), measured on a run of the whole suite; see the header line.
PEAK_DISK_GIB = 13


def pytest_report_header(config: pytest.Config) -> str:
    """The free space where the suite's temporary files go: a run that fills the disk
    fails in hundreds of places at once, so the header says what there is and what it needs."""
    free = shutil.disk_usage(tempfile.gettempdir()).free / 2**30
    line = f"disk: {free:.1f} GiB free in {tempfile.gettempdir()} (the suite needs about {PEAK_DISK_GIB} GiB at its peak)"
    return line if free >= PEAK_DISK_GIB else line + ": TOO LITTLE, free some space or set TMPDIR to a larger disk"


@pytest.fixture(autouse=True)
def _no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test (with its function-scoped fixtures) leaves os.environ and the working
    directory as it found them; a change is undone and the test fails naming it.
    (Wider-scoped fixtures are set up before this snapshot; the session check covers them.)"""
    environ, cwd = _environ(), os.getcwd()
    yield
    leaked = _environ_diff(environ, _environ())
    moved = os.getcwd() != cwd
    if moved:
        os.chdir(cwd)
    for name in leaked:
        if name in environ:
            os.environ[name] = environ[name]
        else:
            del os.environ[name]
    if leaked or moved:
        what = ([f"environment ({', '.join(leaked)})"] if leaked else []) + (["working directory"] if moved else [])
        pytest.fail(f"{request.node.nodeid} changed the {' and the '.join(what)} without restoring it: "
                    "use monkeypatch.setenv / monkeypatch.chdir", pytrace=False)


def _environ() -> dict[str, str]:
    """os.environ without what pytest itself sets while a test runs."""
    return {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}


def _environ_diff(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = session.config.stash.get(_STATE, None)
    if state is None:
        return
    problems = []
    for cache, before in state["caches"].items():
        change = _changes(before, fingerprint(cache))
        if change:
            problems.append(f"{cache} was {change} during the run: a test wrote to the user's PIM cache")
    leaked = _environ_diff(state["environ"], _environ())
    if leaked:
        problems.append(f"the environment was left changed: {', '.join(leaked)}")
    if os.getcwd() != state["cwd"]:
        problems.append(f"the working directory was left changed: {os.getcwd()}")
    if problems:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        for problem in problems:
            if reporter is not None:
                reporter.write_line(f"HERMETIC: {problem}", red=True, bold=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is None:
        return
    state["patch"].undo()
    shutil.rmtree(state["root"], ignore_errors=True)


@pytest.fixture
def stopped_qemu(tmp_path: Path) -> Iterator[Path]:
    """A real QEMU with stopped CPUs (-S) and a QMP socket; yields the socket's path.

    The guest never runs; QEMU's monitor and input layer answer as for any VM."""
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("no qemu-system-x86_64 (make test installs qemu-system-x86)")
    sock = tmp_path / "qmp.sock"
    proc = subprocess.Popen(["qemu-system-x86_64", "-S", "-display", "none", "-nodefaults", "-machine", "pc",
                             "-accel", "tcg", "-qmp", f"unix:{sock},server=on,wait=off"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        yield sock
    finally:
        proc.kill()
        proc.wait()
