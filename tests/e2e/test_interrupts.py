"""Stopping a build in every stage, from every front end, for real (QEMU under TCG):
`pim build` by SIGINT and SIGTERM, the Terraform provider by StopProvider (Ctrl-C to
terraform) and by terraform's death, the Pulumi provider by SIGINT to its process group
(Ctrl-C, or the engine stopping its plugins) and by the engine's death.

Each build is stopped as soon as it reaches the stage under test (a stage-begin event, or
the step's first output line for a step that sleeps) and must end within 30 s leaving
nothing: no QEMU, no runtime files, no scratch folder, no new store object. Install and
boot come from the session cache (one full build warms it), so the later stages are
reached in seconds; the boot stage is reached uncached through a memory size no other
build uses (memory is a boot-snapshot input, not an install input).
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.e2e.conftest import make_config
from tests.e2e.test_tofu_interrupt import MAIN_TF  # resource pim_image.slow
from tests.tofu.tf import TERRAFORM, Terraform

pytestmark = pytest.mark.e2e

LIMIT = 30.0  # seconds from the interrupt to nothing running
SLEEPER = {"type": "shell", "name": "slow", "inline": "echo sleeping; sleep 600"}
# `pim` as `python -m pim.cli.main`, with every thread's stack printed to stderr on SIGUSR1:
# a build that does not stop in time says where it stands.
PIM = [sys.executable, "-c", "import faulthandler, runpy, signal, sys; "
       "faulthandler.register(signal.SIGUSR1, all_threads=True); sys.argv[0] = 'pim'; "
       "runpy.run_module('pim.cli.main', run_name='__main__', alter_sys=True)"]


@dataclass(frozen=True)
class Stage:
    """Where to stop a build: the config that reaches it and the log line that says it is there."""

    name: str
    pipeline: str  # the pipeline's own name for the stage
    config: Callable[[Path, Path], Path]  # (folder, iso) -> pim.yaml
    reached: str  # regex over the front end's output lines
    qemu: bool = True  # a VM runs at that point


def began(stage: str, uncached: bool = False) -> str:
    """A stage-begin, as `pim build --json` prints it or as the providers' logs say it."""
    if uncached:
        return rf': {stage} started(?! \(cached)|"stage-begin", "stage": "{stage}".*"cached": false'
    return rf': {stage} started|"stage-begin", "stage": "{stage}"'


STAGES = {
    "install": Stage("install", "install", lambda d, iso: make_config(d, iso, vars={"nonce": uuid.uuid4().hex}),
                     began("install", uncached=True)),
    # Memory is a boot input only: the step makes provision and final uncached too, so boot is reached.
    "boot": Stage("boot", "boot", lambda d, iso: make_config(d, iso, memory="1100M", provision=[SLEEPER]),
                  began("boot", uncached=True)),
    "provision": Stage("provision", "provision", lambda d, iso: make_config(d, iso, provision=[SLEEPER]),
                       began("provision")),
    "step": Stage("step", "provision", lambda d, iso: make_config(d, iso, provision=[SLEEPER]), r"\[1:slow\] sleeping"),
    "final": Stage("final", "final", lambda d, iso: make_config(d, iso, output={"compression": "zlib"}), began("final"),
                   qemu=False),
}


@pytest.fixture(scope="module")
def warm(fixture_iso: Path, pim_cache: Path, runtime_root: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Install and boot snapshot in the session cache (a cache hit after the other e2e tests)."""
    config = make_config(tmp_path_factory.mktemp("warm"), fixture_iso)
    out = subprocess.run([sys.executable, "-m", "pim.cli.main", "build", "e2e", "--config", str(config), "--json"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]


class Lines:
    """A child's output lines, read on a thread; wait_for() blocks until one matches."""

    def __init__(self, stream: Any):
        self.seen: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self._q.put(line.decode(errors="replace") if isinstance(line, bytes) else line)
        self._q.put(None)

    def wait_for(self, pattern: str, timeout: float = 600, ended: Callable[[], bool] = lambda: False) -> None:
        """Return at the first line matching pattern; fail when the output ends, `ended()` is true
        or timeout seconds pass."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not (ended() and self._q.empty()):
            try:
                line = self._q.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                break
            self.seen.append(line)
            if re.search(pattern, line):
                return
        tail = "".join(self.seen[-40:])
        raise AssertionError(f"never saw /{pattern}/ (the output ended or {timeout:.0f}s passed):\n{tail}")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found += [int(p) for p in task.read_text().split()]
    return found


def wait_gone(pids: list[int], started: float) -> float:
    """Seconds from `started` until every pid has exited (fails past LIMIT + 10 s)."""
    while any(alive(p) for p in pids):
        assert time.monotonic() - started < LIMIT + 10, f"still running: {[p for p in pids if alive(p)]}"
        time.sleep(0.1)
    return time.monotonic() - started


class Leftovers:
    """What a stopped build may leave: QEMU, runtime files, scratch folders, store objects."""

    def __init__(self, cache: Path, runtime: Path):
        self.cache, self.runtime = cache, runtime
        self.objects = self._objects()

    def _objects(self) -> set[str]:
        return {p.name for p in (self.cache / "objects").glob("*")} if (self.cache / "objects").is_dir() else set()

    def qemu_pid(self, stage: Stage, timeout: float = 60) -> int | None:
        pid_file = self.runtime / "pim" / "e2e.pid"
        deadline = time.monotonic() + timeout
        while stage.qemu and time.monotonic() < deadline:
            try:
                return int(pid_file.read_text())
            except (OSError, ValueError):
                time.sleep(0.1)
        assert not stage.qemu, "QEMU never wrote its pid file"
        return None

    def check(self, stage: str) -> None:
        """Nothing of the stopped stage is left. Stages that finished before it stay
        published (complete objects, reused by the next build)."""
        runtime = sorted(p.name for p in (self.runtime / "pim").glob("e2e.*"))
        scratch = sorted(p.name for p in (self.cache / "tmp").glob("*")) if (self.cache / "tmp").is_dir() else []
        unfinished = [name for name in sorted(self._objects() - self.objects)
                      if self._stage_of(name) in (None, stage)]
        assert (runtime, scratch, unfinished) == ([], [], []), \
            f"left behind: runtime files {runtime}, scratch {scratch}, objects {unfinished}"

    def _stage_of(self, name: str) -> str | None:
        try:
            return json.loads((self.cache / "objects" / name / "manifest.json").read_text()).get("stage")
        except (OSError, ValueError):
            return None


def report(front: str, stage: str, how: str, seconds: float) -> None:
    print(f"\n[interrupt] {front:9} {stage:9} {how:14} ended in {seconds:5.1f} s")
    assert seconds < LIMIT, f"{front} took {seconds:.1f} s to stop in the {stage} stage ({how})"


# ---------------------------------------------------------------- pim build

@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_pim_build_stops_in_every_stage(stage: str, sig: int, warm: None, fixture_iso: Path, pim_cache: Path,
                                        runtime_root: Path, tmp_path: Path) -> None:
    st = STAGES[stage]
    config = st.config(tmp_path / "pim", fixture_iso)
    left = Leftovers(pim_cache, runtime_root)
    err = tmp_path / "pim.stderr"
    proc = subprocess.Popen([*PIM, "build", "e2e", "--config", str(config), "--json"],
                            stdout=subprocess.PIPE, stderr=err.open("w"), text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        lines = Lines(proc.stdout)
        try:
            lines.wait_for(st.reached)
        except AssertionError as e:
            raise AssertionError(f"{e}\nstderr:\n{err.read_text()[-3000:]}") from None
        qemu = left.qemu_pid(st)
        proc.send_signal(sig)
        t0 = time.monotonic()
        try:
            proc.wait(timeout=LIMIT + 10)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)
            time.sleep(1)
            raise AssertionError(f"pim build still running {LIMIT + 10:.0f}s after {signal.Signals(sig).name}; "
                                 f"output:\n{''.join(lines.seen[-20:])}\nstderr:\n{err.read_text()[-6000:]}") from None
        seconds = wait_gone([proc.pid] + ([qemu] if qemu else []), t0)
    finally:
        if proc.poll() is None:
            proc.kill()
    report("pim build", stage, signal.Signals(sig).name, seconds)
    assert proc.returncode == 128 + sig
    left.check(st.pipeline)


# ---------------------------------------------------------------- terraform

@pytest.mark.skipif(TERRAFORM is None, reason="no terraform binary on PATH (install Terraform >= 1.0)")
@pytest.mark.parametrize("stage,how", [*((s, "StopProvider") for s in STAGES), ("step", "terraform killed")])
def test_terraform_provider_stops_in_every_stage(stage: str, how: str, warm: None, fixture_iso: Path,
                                                 pim_cache: Path, runtime_root: Path, tmp_path: Path) -> None:
    st = STAGES[stage]
    st.config(tmp_path / "pim", fixture_iso)
    (tmp_path / "main.tf").write_text(MAIN_TF)
    tf = Terraform(tmp_path, tmp_path / "sandbox", {"PIM_CACHE_DIR": str(pim_cache),
                                                    "XDG_RUNTIME_DIR": str(runtime_root), "TF_LOG_PROVIDER": "INFO"})
    left = Leftovers(pim_cache, runtime_root)
    proc = subprocess.Popen([str(TERRAFORM), "apply", "-auto-approve", "-no-color"], cwd=tmp_path, env=tf.env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        lines = Lines(proc.stdout)
        lines.wait_for(st.reached)
        qemu = left.qemu_pid(st)
        providers = children(proc.pid)
        # Ctrl-C to terraform: it asks the provider to stop (StopProvider) and waits for the apply.
        proc.send_signal(signal.SIGKILL if how == "terraform killed" else signal.SIGINT)
        t0 = time.monotonic()
        proc.wait(timeout=LIMIT + 10)
        seconds = wait_gone([proc.pid, *providers] + ([qemu] if qemu else []), t0)
        time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
    report("terraform", stage, how, seconds)
    if how == "StopProvider":
        lines.wait_for("nothing half-done was kept", timeout=10)
        assert "pim_image.slow" not in tf("state", "list", ok=(0, 1)).stdout
    left.check(st.pipeline)


# ---------------------------------------------------------------- pulumi

# The engine's plugins get Ctrl-C as an interactive `pulumi up` gives it: SIGINT at its
# default. A test run started in the background (CI, nohup, `cmd &`) inherits SIGINT
# ignored, and the plugin would inherit that too: the stand-in restores the default.
ENGINE = """import signal, subprocess, sys, time
signal.signal(signal.SIGINT, signal.SIG_DFL)
p = subprocess.Popen([sys.executable, '-u', '-m', 'pulumi.dynamic', '127.0.0.1:1'], stdout=subprocess.PIPE,
                     stderr=open(sys.argv[1], 'wb'), start_new_session=True)
print(p.pid, p.stdout.readline().decode().strip(), flush=True)
time.sleep(3600)
"""


@pytest.fixture
def engine(pim_cache: Path, runtime_root: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen, int, Any, Path]]:
    """A stand-in for the Pulumi engine: it starts the SDK's dynamic-provider server as its
    plugin (in a process group of its own, as the engine does) and the test drives it over
    gRPC. Yields (engine process, provider pid, provider stub, the provider's stderr file)."""
    from tests.pulumi.grpc_client import DynamicServer, provider_env

    log = tmp_path / "provider.log"
    env = provider_env(PIM_CACHE_DIR=str(pim_cache), XDG_RUNTIME_DIR=str(runtime_root))
    proc = subprocess.Popen([sys.executable, "-c", ENGINE, str(log)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    pid, port = (int(v) for v in proc.stdout.readline().split())
    server = DynamicServer(env, "pulumi-python:dynamic/pim:Image")
    import grpc
    from pulumi.runtime.proto import provider_pb2_grpc

    server.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    server.stub = provider_pb2_grpc.ResourceProviderStub(server.channel)
    try:
        yield proc, pid, server, log
    finally:
        server.channel.close()
        for p in (pid, proc.pid):
            if alive(p):
                os.kill(p, signal.SIGKILL)
        proc.wait()


def _follow(path: Path) -> Iterator[str]:
    with open(path, "rb") as f:
        while True:
            line = f.readline()
            if line:
                yield line.decode(errors="replace")
            else:
                time.sleep(0.2)


@pytest.mark.parametrize("stage,how", [*((s, "SIGINT to group") for s in STAGES), ("step", "engine killed")])
def test_pulumi_provider_stops_in_every_stage(stage: str, how: str, warm: None, engine: tuple, fixture_iso: Path,
                                              pim_cache: Path, runtime_root: Path, tmp_path: Path) -> None:
    from pim.pulumi_provider.image import ImageProvider
    from pim.pulumi_provider.inputs import IMAGE_OUTPUTS
    from tests.pulumi.grpc_client import with_provider

    proc, provider, server, log = engine
    st = STAGES[stage]
    config = st.config(tmp_path / "pim", fixture_iso)
    left = Leftovers(pim_cache, runtime_root)
    props = with_provider({"config": str(config), "image": "e2e", "tags": {}, "delete_artifact": False,
                           **dict.fromkeys(IMAGE_OUTPUTS)}, ImageProvider())
    server.configure({})
    checked, failures = server.check("e2e", {}, props)
    assert failures == []
    outcome: list[Any] = []
    create = threading.Thread(target=lambda: outcome.append(_try(lambda: server.create("e2e", checked))), daemon=True)
    create.start()
    Lines(_follow(log)).wait_for(st.reached, ended=lambda: not create.is_alive())
    qemu = left.qemu_pid(st)
    workers = children(provider)
    assert workers, "the build runs in a worker process"
    if how == "engine killed":
        proc.kill()
    else:
        os.killpg(provider, signal.SIGINT)
    t0 = time.monotonic()
    seconds = wait_gone([provider, *workers] + ([qemu] if qemu else []), t0)
    report("pulumi", stage, how, seconds)
    create.join(timeout=10)
    assert outcome and isinstance(outcome[0], Exception), outcome  # Create failed: nothing was created
    left.check(st.pipeline)


def _try(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - the test looks at it
        return e
