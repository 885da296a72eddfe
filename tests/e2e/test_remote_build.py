"""Remote builds against a real OpenSSH server on 127.0.0.1 (tests/sshd.py): the
builder is PIM's own engine run through `pim agent`, with its own home and store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from pim.engine.config.spec import load_config
from pim.engine.pipeline.build import content_keys
from pim.engine.pipeline.keys import file_digest
from pim.engine.store.objects import Store
from tests import sshd
from tests.e2e.conftest import remote_config

pytestmark = pytest.mark.e2e


@pytest.fixture
def host(builder_host: sshd.BuilderHost) -> sshd.BuilderHost:
    return builder_host


def _config(tmp_path: Path, iso: Path, host: sshd.BuilderHost, builders: dict | None = None,
            images: dict | None = None, **kw: object) -> Path:
    return remote_config(tmp_path, iso, host, builders, images, **kw)


def _pim(*args: str, env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pim.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pim.cli.main", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _events(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _unique() -> list[dict]:
    return [{"type": "shell", "name": "mark", "inline": f"echo {uuid.uuid4().hex} > /root/mark"}]


def test_fixture_image_built_remotely_has_the_local_key_and_bytes(
        fixture_iso: Path, tmp_path: Path, host: sshd.BuilderHost, pim_cache: Path) -> None:
    steps = [{"type": "shell", "name": "hello", "inline": "echo built-remotely > /root/remote"}]
    cfg = _config(tmp_path, fixture_iso, host, provision=steps)
    run = _pim("build", "e2e", "-c", str(cfg), "--builder", "remote", "--json")
    assert run.returncode == 0, run.stderr[-3000:]
    events = _events(run.stdout)
    route = next(e for e in events if e["kind"] == "route")
    assert route["data"]["builder"] == "remote" and route["message"] == "--builder remote"
    assert any(e["kind"] == "stage-end" and e.get("stage") == "install" and e["data"]["builder"] == "remote"
               for e in events), "the builder's events stream back, tagged with the builder"
    result = events[-1]["data"]
    assert result["builder"] == "remote" and result["cached"] is False
    # the same key as this machine computes for the spec, the same bytes as on the builder
    assert result["key"] == content_keys(load_config(cfg), "e2e", Store(pim_cache))["final"]
    # the builder named the inputs as this config does, though its copy renames every file
    from pim.engine.pipeline.build import current_inputs

    named = Store(pim_cache).manifest(result["key"]).input_digests
    assert named == current_inputs(load_config(cfg), "e2e", Store(pim_cache))[1]
    assert not [n for n in named if "files/" in n], named
    local = Path(result["path"])
    assert local.is_relative_to(pim_cache) and file_digest(local) == result["sha256"]
    there = host.cache / "objects" / result["key"] / "disk.qcow2"
    assert file_digest(there) == result["sha256"]
    assert host.leftovers() == []
    assert not list((pim_cache / "partial").glob(f"{result['key']}*"))
    # this machine now has it: a local build of the same spec is a cache hit with those bytes
    again = _pim("build", "e2e", "-c", str(cfg), "--local", "--json")
    assert again.returncode == 0, again.stderr[-2000:]
    hit = _events(again.stdout)[-1]["data"]
    assert (hit["cached"], hit["path"], hit["sha256"]) == (True, result["path"], result["sha256"])
    # another client (its own store) asking the builder gets the builder's cache hit
    other = tmp_path / "other-client"
    third = _pim("build", "e2e", "-c", str(cfg), "--builder", "remote", "--json",
                 env={"PIM_CACHE_DIR": str(other)})
    assert third.returncode == 0, third.stderr[-2000:]
    evs = _events(third.stdout)
    assert evs[-1]["data"]["cached"] is True and evs[-1]["data"]["sha256"] == result["sha256"]
    assert not any("starting QEMU" in e.get("message", "") for e in evs)
    assert not any("uploading" in e.get("message", "") for e in evs), "the builder kept the inputs by sha256"
    # left on the builder when asked: recorded here and listed
    kept = _pim("build", "e2e", "-c", str(cfg), "--builder", "remote", "--no-fetch", "--json",
                env={"PIM_CACHE_DIR": str(tmp_path / "third-client")})
    assert kept.returncode == 0, kept.stderr[-2000:]
    assert _events(kept.stdout)[-1]["data"]["path"] == str(there)
    listed = json.loads(_pim("images", "list", "--json", env={"PIM_CACHE_DIR": str(tmp_path / "third-client")})
                        .stdout)
    assert [(e["location"], e["path"], e["key"]) for e in listed] == [("remote", str(there), result["key"])]


def _wait_for(proc: subprocess.Popen, text: str, limit: float = 300) -> list[dict]:
    seen: list[dict] = []
    deadline = time.monotonic() + limit
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(json.loads(line))
        if text in seen[-1].get("message", "") and seen[-1].get("data", {}).get("builder") == "remote":
            return seen
        assert time.monotonic() < deadline, f"{text!r} did not come within {limit} s"
    raise AssertionError(f"the build ended before {text!r}: {proc.stderr.read()[-2000:] if proc.stderr else ''}")


def _objects(host: sshd.BuilderHost) -> set[str]:
    return {p.name for p in (host.cache / "objects").iterdir()} if (host.cache / "objects").is_dir() else set()


def _clean_within(host: sshd.BuilderHost, seconds: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if not host.leftovers() and not host.processes("agent build"):
            return time.monotonic() - start
        time.sleep(0.5)
    raise AssertionError(f"left on the builder after {seconds} s: {host.leftovers()} {host.processes('agent build')}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_on_the_client_stops_the_remote_build(fixture_iso: Path, tmp_path: Path,
                                                     host: sshd.BuilderHost, sig: int) -> None:
    cfg = _config(tmp_path, fixture_iso, host, vars={"extra": f"# {uuid.uuid4().hex}"})  # a fresh install
    before = _objects(host)
    proc = _start("build", "e2e", "-c", str(cfg), "--builder", "remote", "--json")
    _wait_for(proc, "starting QEMU")  # said just before QEMU is started
    deadline = time.monotonic() + 15
    while not host.processes("qemu-system") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert host.processes("qemu-system"), "the build's QEMU runs on the builder"
    proc.send_signal(sig)
    assert proc.wait(timeout=90) == 128 + sig
    _clean_within(host, 10)  # the client waited for the builder to stop
    assert _objects(host) == before, "nothing unfinished was published on the builder"


def test_a_dropped_connection_stops_the_remote_build(fixture_iso: Path, tmp_path: Path,
                                                     host: sshd.BuilderHost) -> None:
    cfg = _config(tmp_path, fixture_iso, host, vars={"extra": f"# {uuid.uuid4().hex}"})
    before = _objects(host)
    proc = _start("build", "e2e", "-c", str(cfg), "--builder", "remote", "--json")
    _wait_for(proc, "starting QEMU")
    # kill the sshd processes serving this connection (children of the listening sshd)
    sessions = subprocess.run(["pgrep", "-P", str(host.proc.pid)], capture_output=True, text=True).stdout.split()
    assert sessions
    for pid in sessions:
        os.kill(int(pid), signal.SIGKILL)
    took = _clean_within(host, 30)
    assert _objects(host) == before
    assert proc.wait(timeout=60) != 0
    assert "connection" in proc.stderr.read().lower()
    assert took < 30


def test_unreachable_refused_and_unknown_builders_fail_in_seconds(fixture_iso: Path, tmp_path: Path,
                                                                   host: sshd.BuilderHost) -> None:
    stranger = tmp_path / "stranger_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    other = tmp_path / "known_hosts_other"
    pub = (host.folder / "client_key.pub").read_text().split()  # a key, but not the host's
    other.write_text(f"[127.0.0.1]:{host.port} {pub[0]} {pub[1]}\n")
    cases = {
        "down": ({**host.builder(), "uri": f"ssh://root@127.0.0.1:{sshd.free_port()}"}, 1,
                 ["unreachable", "sshd listens on port"]),
        "refused": ({**host.builder(), "key_file": str(stranger)}, 2, ["refused the login", "authorized_keys"]),
        "unknown": ({**host.builder(), "known_hosts": str(empty)}, 2, ["not in", "ssh-keyscan -p"]),
        "changed": ({**host.builder(), "known_hosts": str(other)}, 2, ["CHANGED", "ssh-keygen -R"]),
    }
    cfg = _config(tmp_path, fixture_iso, host, builders={name: b for name, (b, _, _) in cases.items()})
    for name, (_, code, words) in cases.items():
        start = time.monotonic()
        run = _pim("build", "e2e", "-c", str(cfg), "--builder", name, timeout=60)
        took = time.monotonic() - start
        assert run.returncode == code, (name, run.stderr[-2000:])
        assert f"builder {name}" in run.stderr and all(w in run.stderr for w in words), (name, run.stderr)
        assert took < 15, f"{name}: took {took:.1f} s"
    check = _pim("builders", "check", "-c", str(cfg), "--json", "down", "refused", timeout=60)
    assert check.returncode == 1
    assert [r["ok"] for r in json.loads(check.stdout)] == [False, False]


def test_builders_check_reports_version_accelerator_disk_and_jobs(fixture_iso: Path, tmp_path: Path,
                                                                  host: sshd.BuilderHost) -> None:
    cfg = _config(tmp_path, fixture_iso, host)
    run = _pim("builders", "check", "-c", str(cfg), "--json", "remote", timeout=120)
    assert run.returncode == 0, run.stderr
    (r,) = json.loads(run.stdout)
    import pim

    assert r["ok"] and r["version"] == pim.__version__ and r["accel"]["x86_64"] in ("kvm", "tcg")
    assert r["free_bytes"] > 0 and r["running"] == 0 and r["cache_dir"] == str(host.cache)


def test_a_builder_of_another_release_is_reported(fixture_iso: Path, tmp_path: Path,
                                                  host: sshd.BuilderHost) -> None:
    fake = host.home / "old-pim"
    fake.write_text('#!/bin/sh\necho \'{"hello": {"version": "0.0.1", "protocol": 0}}\'\nread job\n')
    fake.chmod(0o755)
    cfg = _config(tmp_path, fixture_iso, host, builders={"old": {**host.builder(), "pim": str(fake)}})
    run = _pim("build", "e2e", "-c", str(cfg), "--builder", "old", timeout=60)
    assert run.returncode == 2
    assert "builder old runs PIM 0.0.1" in run.stderr and "install the same PIM release" in run.stderr


def test_three_images_on_two_builders_overlap(fixture_iso: Path, tmp_path: Path, host: sshd.BuilderHost) -> None:
    builders = {"remote": host.builder(max_jobs=1), "local": {"max_jobs": 1}}
    images = {name: {"builder": where, "provision": _unique() + [{"type": "shell", "inline": "sleep 3"}]}
              for name, where in (("ta", "local"), ("tb", "remote"), ("tc", "remote"))}
    cfg = _config(tmp_path, fixture_iso, host, builders=builders, images=images)
    start = time.monotonic()
    run = _pim("build", "ta", "tb", "tc", "ta", "-c", str(cfg), "--json", timeout=1500)
    makespan = time.monotonic() - start
    assert run.returncode == 0, run.stderr[-3000:]
    events = _events(run.stdout)
    spans = {}
    for name in ("ta", "tb", "tc"):
        mine = [e for e in events if e.get("image") == name]
        assert sum(e["kind"] == "result" for e in mine) == 1, "an image asked for twice is built once"
        begin = min(e["time"] for e in mine if e["kind"] == "stage-begin")
        end = max(e["time"] for e in mine if e["kind"] == "stage-end")
        spans[name] = (begin, end)
    (a0, a1), (b0, b1), (c0, c1) = spans["ta"], spans["tb"], spans["tc"]
    assert b1 <= c0 or c1 <= b0, "max_jobs 1: the remote builder ran one build at a time"
    assert min(a1, max(b1, c1)) > max(a0, min(b0, c0)), "the two builders worked at the same time"
    serial = sum(e - s for s, e in spans.values())
    assert makespan < serial, f"makespan {makespan:.0f} s, one after another {serial:.0f} s"
