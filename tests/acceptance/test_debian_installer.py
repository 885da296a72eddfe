"""The real Debian 12 installer under PIM: default preseed, the host's mirror, TCG.

The ISO is assembled from Debian's own installer package (netinst.py). The test
proves that the installer fetched the preseed from PIM's answer server and ran
unattended with it. Then either the install completes, or, where the mirror
lacks some of the installer's own packages (udebs), PIM ends the build within
60 s of the installer's first retrieval error, naming the missing file.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.acceptance.conftest import StageTimes, load_script

pytestmark = pytest.mark.acceptance

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "deb12"
BUILD_DEADLINE = 20 * 60  # the test's own bound; PIM's installer.timeout is shorter
RETRIEVAL_ERROR = re.compile(r"\bERROR \d{3}\b|package retrieval failed|[Ff]ailed to (?:retrieve|download)")
QUESTION = re.compile(r"\[(?:!!|!|\.|\?)\] \w")  # d-i's dialog titles carry the question's priority
PRESEED_LOADED = re.compile(r"successfully loaded preseed file from http://10\.0\.2\.2:\d+/\*{8}/preseed\.cfg")


def _config(folder: Path, iso: Path, mirror: str, arch: str = "x86_64") -> Path:
    (folder / "installer.iso").symlink_to(iso)
    image = {"source": {"iso": "installer.iso"}, "arch": arch, "disk_size": "4G", "memory": "1G",
             "installer": {"family": "debian", "mirror": mirror, "timeout": "15m"}}
    cfg = folder / "pim.yaml"
    cfg.write_text(yaml.safe_dump({"images": {IMAGE: image}}, sort_keys=False))
    return cfg


def _build(cfg: Path) -> tuple[int, list[dict], str, float, float]:
    """Runs `pim build --json`; (exit status, events, stderr, start, end) with wall-clock times."""
    started = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "pim.cli.main", "build", IMAGE, "-c", str(cfg), "--json"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ.copy())
    watchdog = threading.Timer(BUILD_DEADLINE, proc.kill)
    watchdog.start()
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        events = [json.loads(line) for line in proc.stdout if line.startswith("{")]  # type: ignore[union-attr]
        rc = proc.wait()
    finally:
        watchdog.cancel()
    ended = time.time()
    reader.join(timeout=10)
    return rc, events, "".join(stderr), started, ended


def _first(events: list[dict], pred) -> dict | None:  # type: ignore[no-untyped-def]
    return next((e for e in events if pred(e)), None)


def test_real_debian_installer_runs_unattended_and_fails_fast_on_a_missing_udeb(
        netinst_iso: Path, pim_env: dict[str, Path], tmp_path: Path, stage_times: StageTimes) -> None:
    _run_and_check(netinst_iso, "x86_64", pim_env, tmp_path, stage_times)


def test_real_arm64_debian_installer_runs_unattended_under_uefi(
        netinst_iso_arm64: Path, pim_env: dict[str, Path], tmp_path: Path, stage_times: StageTimes) -> None:
    """The same for arm64: /install.a64/ detected, an aarch64 virt guest under TCG with AAVMF."""
    _run_and_check(netinst_iso_arm64, "aarch64", pim_env, tmp_path, stage_times)


def _run_and_check(iso: Path, arch: str, pim_env: dict[str, Path], tmp_path: Path, stage_times: StageTimes) -> None:
    mirror = load_script(ROOT / "tests/fixtures/installer/build.py").debian_mirror()
    rc, events, stderr, started, ended = _build(_config(tmp_path, iso, mirror, arch))
    timeline = "\n".join(f"{e['time'] - started:7.1f} {e.get('kind')} {e.get('message', '')[:150]}"
                         for e in events if e.get("data", {}).get("source") != "console")
    assert events, f"pim build printed no events (exit status {rc}):\n{stderr}"

    def msg(e: dict) -> str:
        return e.get("message", "")

    def syslog(e: dict) -> bool:
        return e.get("data", {}).get("source") == "syslog"

    install = _first(events, lambda e: e["kind"] == "stage-begin" and e.get("stage") == "install")
    stream = _first(events, lambda e: msg(e) == "receiving the installer's log stream")
    served = _first(events, lambda e: msg(e).startswith("answer server: GET preseed.cfg 200"))
    loaded = _first(events, lambda e: syslog(e) and PRESEED_LOADED.search(msg(e)))
    assert install and stream, f"no log stream from the installer:\n{timeline}\n{stderr[-3000:]}"
    t0 = install["time"]
    stage_times.record("pim build start -> install stage (QEMU starts)", t0 - started)
    stage_times.record("QEMU start -> first line of the installer's syslog", stream["time"] - t0)

    # The installer fetched its preseed from PIM's server, loaded it, and ran with it.
    assert served, f"the installer never fetched preseed.cfg from PIM's answer server:\n{timeline}"
    stage_times.record("QEMU start -> preseed served by PIM", served["time"] - t0)
    assert loaded, f"the installer did not report loading the preseed:\n{timeline}"
    stage_times.record("preseed served -> loaded by the installer", loaded["time"] - served["time"])
    steps = [e["data"]["step"] for e in events if "step" in e.get("data", {}) and e["time"] >= loaded["time"]]
    assert {"localechooser", "choose-mirror"} <= set(steps), f"d-i's steps after the preseed: {steps}"
    assert any(syslog(e) and "debian-installer/locale preseeded to 'en_US.UTF-8' (seen: true)" in msg(e)
               for e in events), "the locale was not taken from the preseed"

    error = _first(events, lambda e: syslog(e) and RETRIEVAL_ERROR.search(msg(e)))
    horizon = error["time"] if error else ended
    questions = [msg(e) for e in events if e.get("data", {}).get("source") == "console"
                 and e["time"] < horizon and QUESTION.search(msg(e))]
    assert not questions, f"the installer asked questions: {questions[:5]}"
    assert not [p for p in (pim_env["runtime"] / "pim").glob(f"{IMAGE}.*")], "QEMU's runtime files were left"

    if rc == 0:  # the mirror had everything: the install completed
        assert error is None, f"a retrieval error was logged, yet the build succeeded: {msg(error)}"
        stage_times.record("pim build, complete install", ended - started)
        assert Path(events[-1]["data"]["path"]).exists(), f"no artifact after a successful build: {events[-1]}"
        return

    # The mirror lacks some udebs: PIM ends the build within 60 s of the first error, naming the file.
    assert rc == 1, f"exit status {rc}:\n{stderr[-3000:]}"
    assert error, f"the build failed, but not on a retrieval error:\n{stderr[-3000:]}\n{timeline}"
    stage_times.record("QEMU start -> installer's first retrieval error", error["time"] - t0)
    stage_times.record("first retrieval error -> pim build ended", ended - error["time"])
    stage_times.record("pim build total", ended - started)
    failed = re.search(r"the installer failed in step (\S+): could not retrieve (\S+\.udeb) \(", stderr)
    assert failed, f"the failure does not name the step and the missing file:\n{stderr[-3000:]}"
    step, missing = failed.groups()
    print(f"[result] d-i steps: {' -> '.join(steps)}\n[result] {failed.group(0)[:-2]}", flush=True)
    assert step in steps
    assert any(syslog(e) and missing in msg(e) and e["time"] <= error["time"] for e in events), (
        f"{missing} was not what the installer was retrieving")
    assert "--- last lines ---" in stderr and "package retrieval failed" in stderr.split("--- last lines ---")[1]
    assert ended - error["time"] < 60, f"PIM took {ended - error['time']:.0f}s after the first retrieval error"
    result = events[-1]
    assert result["kind"] == "result" and result["data"]["ok"] is False
