"""The stage cache with real builds: concurrent builds of one image build once,
a script change replays provisioning only, a killed build leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pim.engine.pipeline.build import build
from pim.engine.events import Emitter, Event
from pim.engine.qemu.machine import pid_alive
from pim.engine.config.spec import load_config
from pim.engine.store.objects import Store
from tests.e2e.conftest import make_config

pytestmark = pytest.mark.e2e


def _cli(cfg: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pim.cli.main", "build", "e2e", "-c", str(cfg), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())


def _events(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_concurrent_builds_of_one_image_build_once(fixture_iso: Path, tmp_path: Path) -> None:
    steps = [{"type": "shell", "name": "concurrent", "inline": "echo concurrent > /root/concurrent"}]
    cfg = make_config(tmp_path, fixture_iso, provision=steps)
    first, second = _cli(cfg), _cli(cfg)
    outs = [p.communicate(timeout=900) for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], [o[1][-2000:] for o in outs]
    runs = [_events(o[0]) for o in outs]
    started = [any("starting QEMU" in e.get("message", "") for e in evs) for evs in runs]
    assert sorted(started) == [False, True], "exactly one of the two builds may start QEMU"
    results = [evs[-1]["data"] for evs in runs]
    assert results[0]["path"] == results[1]["path"] and results[0]["sha256"] == results[1]["sha256"]
    assert sorted(r["cached"] for r in results) == [False, True]
    builder = runs[started.index(True)]
    # the script changed, the install inputs did not: the install stage came from the cache
    install_end = next(e for e in builder if e["kind"] == "stage-end" and e.get("stage") == "install")
    assert install_end["data"]["cached"] is True


def test_killed_build_publishes_nothing_and_next_build_succeeds(fixture_iso: Path, tmp_path: Path,
                                                                 pim_cache: Path, runtime_root: Path) -> None:
    steps = [{"type": "shell", "name": "slow", "inline": "echo started; sleep 600"}]
    cfg = make_config(tmp_path, fixture_iso, provision=steps)
    proc = _cli(cfg)
    for line in proc.stdout:
        if "[1:slow] started" in json.loads(line).get("message", ""):
            break
    qemu_pid = int((runtime_root / "pim" / "e2e.pid").read_text())
    before = {p.name for p in (pim_cache / "objects").iterdir()}
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 15
    while pid_alive(qemu_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not pid_alive(qemu_pid), "QEMU must die with the PIM process that owned it"
    assert {p.name for p in (pim_cache / "objects").iterdir()} == before
    assert list((pim_cache / "tmp").iterdir()), "the killed build's scratch folder is still there"
    # The next build cleans the leftovers and succeeds.
    quick = [{"type": "shell", "name": "quick", "inline": "echo quick > /root/quick"}]
    events: list[Event] = []
    result = build(load_config(make_config(tmp_path, fixture_iso, provision=quick)), "e2e", Emitter(events.append),
                   store=Store(pim_cache))
    assert result.path.is_file() and not result.cached
    assert list((pim_cache / "tmp").iterdir()) == []
    assert [p.name for p in (runtime_root / "pim").iterdir() if p.name.startswith("e2e.")] == []


def _pim(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pim.cli.main", *args], capture_output=True, text=True,
                          env=os.environ.copy(), timeout=120)


HOLD = [{"type": "shell", "name": "hold", "inline": "echo holding; date +clock=%s; sleep 8; echo leased > /root/leased"}]


def test_gc_and_rm_during_a_build_skip_what_it_uses_and_its_artifact_boots(
        fixture_iso: Path, tmp_path: Path, pim_cache: Path) -> None:
    from pim.engine.qemu.argv import RuntimeFiles, VmConfig
    from pim.engine.qemu.machine import Machine

    proc = _cli(make_config(tmp_path, fixture_iso, provision=HOLD))
    seen: list[dict] = []
    for line in proc.stdout:  # the provision step runs: install and boot snapshot are in use
        seen.append(json.loads(line))
        if "[1:hold] holding" in seen[-1].get("message", ""):
            break
    begun = {e["stage"]: e["data"] for e in seen if e["kind"] == "stage-begin"}
    used = [begun["install"]["key"], begun["boot"]["key"]]
    _pim("images", "rm", "e2e")  # the image's newest build no longer keeps anything: gc tries all
    gc = _pim("images", "gc")
    assert gc.returncode == 0, gc.stderr
    for key in used:
        assert f"kept {key[:12]}" in gc.stderr and "in use by a running build" in gc.stderr
        rm = _pim("images", "rm", key[:12])
        assert rm.returncode == 2 and "in use by a running build" in rm.stderr, rm.stderr
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    events = _events(out)
    result = events[-1]["data"]
    # The boot snapshot was saved by an earlier build of this run, minutes ago: the
    # resumed guest's clock was set to now before the step ran.
    clock = next(e for e in events if "[1:hold] clock=" in e.get("message", ""))
    assert abs(int(clock["message"].rsplit("=", 1)[1]) - clock["time"]) < 5, clock
    store = Store(pim_cache)
    assert all(store.has(key) for key in used)
    runtime = RuntimeFiles.for_name("e2e-leased")
    vm_cfg = VmConfig(name="e2e-leased", disk=Path(result["path"]), serial_log=tmp_path / "serial.log",
                      runtime=runtime, memory_mib=1024, snapshot=True)
    with Machine(vm_cfg, Emitter(), "check") as vm:
        assert vm.agent(timeout=240).file_read("/root/leased") == b"leased\n"
        vm.stop(graceful=60)


def test_output_options_alone_rerun_only_the_final_stage(fixture_iso: Path, tmp_path: Path, pim_cache: Path) -> None:
    store = Store(pim_cache)
    first = build(load_config(make_config(tmp_path, fixture_iso, provision=HOLD)), "e2e", store=store)
    other = "zlib" if first.manifest().artifact.compression == "zstd" else "zstd"
    events: list[Event] = []
    cfg = load_config(make_config(tmp_path / "zlib", fixture_iso, provision=HOLD, output={"compression": other}))
    again = build(cfg, "e2e", Emitter(events.append), store=store)
    begun = {e.stage: e.data["cached"] for e in events if e.kind == "stage-begin"}
    assert begun == {"provision": True, "final": False}, begun
    assert not any("starting QEMU" in e.message for e in events)
    m = again.manifest()
    assert m.artifact.compression == other and again.key != first.key
    assert m.lineage["provision"].key == first.manifest().lineage["provision"].key
    assert m.stages["provision"]["cached"] is True
