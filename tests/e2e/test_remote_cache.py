"""The shared build cache for real: moto's S3 server on 127.0.0.1 as the object store,
and separate local caches as separate machines sharing one bucket.

Machine A is the session's cache (its e2e build is warm from the other e2e tests) and
pushes; each "machine B" is an empty cache folder of its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from pim.engine.remote.s3 import MULTIPART_CHUNK as PART
from tests.deploy.conftest import moto_url  # noqa: F401  (fixture)
from tests.e2e.conftest import make_config

pytestmark = pytest.mark.e2e

STEP = [{"type": "shell", "name": "hello", "inline": "echo hello from machine B"}]


@pytest.fixture(scope="module")
def bucket(moto_url: str) -> str:  # noqa: F811
    import boto3

    name = f"pim-cache-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=moto_url).create_bucket(Bucket=name)
    return name


def s3(moto_url: str) -> Any:  # noqa: F811
    import boto3

    return boto3.client("s3", endpoint_url=moto_url)


def keys_under(moto_url: str, bucket: str, prefix: str) -> set[str]:  # noqa: F811
    pages = s3(moto_url).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def config(folder: Path, iso: Path, url: str, endpoint: str, **cache: Any) -> Path:
    provision = cache.pop("provision", None)
    path = make_config(folder, iso, provision=provision)
    data = yaml.safe_load(path.read_text())
    data["cache"] = {"remote": url, "endpoint_url": endpoint, **cache}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class Run:
    """One `pim build --json` on a machine (a cache folder): its events and result."""

    def __init__(self, cfg: Path, cache: Path, *extra: str, popen: bool = False):
        env = dict(os.environ, PIM_CACHE_DIR=str(cache))
        argv = [sys.executable, "-m", "pim.cli.main", "build", "e2e", "--config", str(cfg), "--json", *extra]
        if popen:
            self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            return
        out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
        self.code, self.stderr = out.returncode, out.stderr
        self.events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]

    def logs(self, stage: str | None = None) -> list[str]:
        return [e["message"] for e in self.events if e["kind"] in ("log", "warning")
                and (stage is None or e.get("stage") == stage)]

    def began(self) -> dict[str, bool]:
        """{stage: cached} for every stage-begin."""
        return {e["stage"]: e["data"]["cached"] for e in self.events if e["kind"] == "stage-begin"}

    @property
    def result(self) -> dict[str, Any]:
        return next(e for e in self.events if e["kind"] == "result")["data"]

    def ok(self) -> "Run":
        assert self.code == 0, self.stderr[-3000:]
        return self


@pytest.fixture(scope="module")
def machine_a(fixture_iso: Path, pim_cache: Path, bucket: str, moto_url: str,  # noqa: F811
              tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Machine A builds e2e (a session cache hit once warm) and pushes its lineage."""
    cfg = config(tmp_path_factory.mktemp("a"), fixture_iso, f"s3://{bucket}/team", moto_url)
    return Run(cfg, pim_cache).ok()


def test_machine_a_pushes_every_stage_of_its_build_manifest_last(machine_a: Run, bucket: str,
                                                                moto_url: str) -> None:  # noqa: F811
    stored = keys_under(moto_url, bucket, "team/")
    manifests = {k for k in stored if k.startswith("team/manifests/")}
    assert len(manifests) == 4, stored  # install, boot, provision, final
    final = machine_a.result["key"]
    assert f"team/manifests/{final}.json" in manifests and "team/refs/e2e.json" in stored
    index = json.loads(s3(moto_url).get_object(Bucket=bucket, Key=f"team/manifests/{final}.json")["Body"].read())
    assert index["key"] == final and index["manifest"]["key"] == final
    assert index["files"]["disk.qcow2"]["sha256"] == machine_a.result["sha256"]
    assert {"sbom.cdx.json", "provenance.intoto.jsonl"} <= set(index["files"])  # they travel with the image
    assert all(f"team/blobs/sha256/{b['sha256']}" in stored for b in index["files"].values())


def test_a_fresh_machine_gets_the_image_without_starting_qemu(machine_a: Run, fixture_iso: Path, bucket: str,
                                                              moto_url: str, tmp_path: Path) -> None:  # noqa: F811
    cfg = config(tmp_path / "b", fixture_iso, f"s3://{bucket}/team", moto_url)
    b = Run(cfg, tmp_path / "cache-b").ok()
    assert b.result["key"] == machine_a.result["key"] and b.result["cached"]
    assert not any("starting QEMU" in m for m in b.logs()), b.logs()
    assert Path(b.result["path"]).read_bytes() == Path(machine_a.result["path"]).read_bytes()
    for name in ("sbom.cdx.json", "provenance.intoto.jsonl"):
        assert (Path(b.result["path"]).parent / name).read_bytes() == \
            (Path(machine_a.result["path"]).parent / name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "cache-b" / "objects").iterdir()) == [b.result["key"]]


def test_a_script_change_pulls_install_and_boot_and_builds_only_the_rest(
        machine_a: Run, fixture_iso: Path, bucket: str, moto_url: str, tmp_path: Path) -> None:  # noqa: F811
    cfg = config(tmp_path / "b", fixture_iso, f"s3://{bucket}/team", moto_url, provision=STEP)
    b = Run(cfg, tmp_path / "cache-b").ok()
    assert b.began() == {"install": True, "boot": True, "provision": False, "final": False}
    assert "pulled install" in " ".join(b.logs("install")) and "pulled boot" in " ".join(b.logs("boot"))
    assert not any("starting QEMU" in m for m in b.logs("install") + b.logs("boot"))
    assert any("hello from machine B" in m for m in b.logs("provision"))
    # What B built is pushed: a third machine now gets it by pulling alone.
    c = Run(cfg, tmp_path / "cache-c").ok()
    assert c.result["cached"] and c.result["sha256"] == b.result["sha256"]


def test_push_false_uploads_nothing(machine_a: Run, fixture_iso: Path, bucket: str, moto_url: str,  # noqa: F811
                                    tmp_path: Path) -> None:
    before = keys_under(moto_url, bucket, "")
    step = [{"type": "shell", "name": "readonly", "inline": "echo read-only consumer"}]
    cfg = config(tmp_path / "b", fixture_iso, f"s3://{bucket}/team", moto_url, push=False, provision=step)
    b = Run(cfg, tmp_path / "cache-b").ok()
    assert b.began()["provision"] is False  # it built something new...
    assert keys_under(moto_url, bucket, "") == before  # ...and uploaded nothing


def test_no_remote_cache_flag_neither_pulls_nor_pushes(machine_a: Run, fixture_iso: Path, bucket: str,  # noqa: F811
                                                        moto_url: str, tmp_path: Path) -> None:
    before = keys_under(moto_url, bucket, "")
    cfg = config(tmp_path / "b", fixture_iso, f"s3://{bucket}/team", moto_url)
    cache = tmp_path / "cache-b"
    (cache / "objects").mkdir(parents=True)
    proc = Run(cfg, cache, "--no-remote-cache", popen=True).proc
    try:  # it starts a cold build: seeing the install begin uncached is enough
        assert proc.stdout is not None
        for line in proc.stdout:
            if '"stage-begin"' in line:
                assert '"stage": "install"' in line and '"cached": false' in line, line
                break
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert keys_under(moto_url, bucket, "") == before


def test_a_corrupt_remote_object_is_discarded_and_rebuilt(machine_a: Run, fixture_iso: Path, pim_cache: Path,
                                                          bucket: str, moto_url: str, tmp_path: Path) -> None:  # noqa: F811
    url = f"s3://{bucket}/corrupt"
    Run(config(tmp_path / "a", fixture_iso, url, moto_url), pim_cache).ok()  # A pushes to a prefix of its own
    final = machine_a.result["key"]
    client = s3(moto_url)
    index = json.loads(client.get_object(Bucket=bucket, Key=f"corrupt/manifests/{final}.json")["Body"].read())
    blob = f"corrupt/blobs/sha256/{index['files']['disk.qcow2']['sha256']}"
    data = bytearray(client.get_object(Bucket=bucket, Key=blob)["Body"].read())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    client.put_object(Bucket=bucket, Key=blob, Body=bytes(data))

    b = Run(config(tmp_path / "b", fixture_iso, url, moto_url, push=False), tmp_path / "cache-b").ok()
    warnings = [e["message"] for e in b.events if e["kind"] == "warning"]
    assert any("corrupt" in w and "disk.qcow2" in w for w in warnings), warnings
    assert b.began()["final"] is False  # rebuilt from the pulled provision object
    art = Path(b.result["path"])
    from pim.engine.source.fetch import sha256_file

    assert sha256_file(art) == b.result["sha256"]
    assert bytes(data) != art.read_bytes()


def test_an_interrupted_push_leaves_nothing_visible_and_the_next_push_completes(
        machine_a: Run, fixture_iso: Path, pim_cache: Path, bucket: str, moto_url: str,  # noqa: F811
        tmp_path: Path) -> None:
    url = f"s3://{bucket}/interrupted"
    cfg = config(tmp_path / "a", fixture_iso, url, moto_url)
    proc = Run(cfg, pim_cache, popen=True).proc
    assert proc.stdout is not None
    for line in proc.stdout:  # killed (no cleanup at all) once the install disk's first parts are up
        event = json.loads(line)
        if event["kind"] == "progress" and "pushing install" in event["message"] and event["data"]["done"] > 3 * PART:
            proc.kill()
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not any(k.startswith("interrupted/manifests/") for k in keys_under(moto_url, bucket, "interrupted/"))
    unfinished = s3(moto_url).list_multipart_uploads(Bucket=bucket, Prefix="interrupted/").get("Uploads", [])
    assert len(unfinished) == 1, unfinished

    again = Run(cfg, pim_cache).ok()
    pushed = [m for m in again.logs() if "pushed 4 object(s)" in m]
    assert pushed and "resumed" in pushed[0], again.logs()  # the parts sent before the kill were kept
    assert not s3(moto_url).list_multipart_uploads(Bucket=bucket, Prefix="interrupted/").get("Uploads")
    b = Run(config(tmp_path / "b", fixture_iso, url, moto_url), tmp_path / "cache-b").ok()
    assert b.result["sha256"] == machine_a.result["sha256"] and b.result["cached"]


@pytest.fixture
def user_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    path = tmp_path / "config" / "pim" / "config.yaml"
    path.parent.mkdir(parents=True)
    yield path


def test_the_per_user_config_names_the_cache_when_pim_yaml_does_not(
        machine_a: Run, fixture_iso: Path, bucket: str, moto_url: str, tmp_path: Path,  # noqa: F811
        user_config: Path) -> None:
    user_config.write_text(yaml.safe_dump({"cache": {"remote": f"s3://{bucket}/team", "endpoint_url": moto_url}}))
    cfg = make_config(tmp_path / "b", fixture_iso)  # no cache: in it
    b = Run(cfg, tmp_path / "cache-b").ok()
    assert b.result["cached"] and any("pulled final" in m for m in b.logs())


def pim_cli(*args: str, cache: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, **({"PIM_CACHE_DIR": str(cache)} if cache else {}))
    return subprocess.run([sys.executable, "-m", "pim.cli.main", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_list_and_prune_keep_what_the_newest_build_uses(machine_a: Run, fixture_iso: Path, pim_cache: Path,
                                                        bucket: str, moto_url: str, tmp_path: Path) -> None:  # noqa: F811
    url = f"s3://{bucket}/prune"
    cfg_a = config(tmp_path / "a", fixture_iso, url, moto_url)
    Run(cfg_a, pim_cache).ok()
    cfg_b = config(tmp_path / "b", fixture_iso, url, moto_url, provision=STEP)
    b = Run(cfg_b, tmp_path / "cache-b").ok()  # now the newest build of e2e: A's provision and final are not used
    listed = pim_cli("images", "list", "--remote", "--json", "--config", str(cfg_a))
    assert listed.returncode == 0, listed.stderr
    entries = {e["key"]: e for e in json.loads(listed.stdout)}
    assert len(entries) == 6
    old_final, new_final = machine_a.result["key"], b.result["key"]
    assert entries[new_final]["kept"] and not entries[old_final]["kept"]
    assert sorted(e["stage"] for e in entries.values() if not e["kept"]) == ["final", "provision"]

    kept_young = pim_cli("cache", "prune", "--remote", "--older-than", "30d", "--config", str(cfg_a))
    assert kept_young.returncode == 0 and "removed 0 object(s)" in kept_young.stderr, kept_young.stderr
    dry = pim_cli("cache", "prune", "--remote", "--older-than", "0s", "--dry-run", "--config", str(cfg_a))
    assert dry.returncode == 0 and "would remove 2 object(s)" in dry.stderr, dry.stderr
    assert len(keys_under(moto_url, bucket, "prune/manifests/")) == 6
    done = pim_cli("cache", "prune", "--remote", "--older-than", "0s", "--config", str(cfg_a))
    assert done.returncode == 0 and "removed 2 object(s)" in done.stderr, done.stderr
    manifests = keys_under(moto_url, bucket, "prune/manifests/")
    assert f"prune/manifests/{old_final}.json" not in manifests and len(manifests) == 4
    assert f"prune/blobs/sha256/{machine_a.result['sha256']}" not in keys_under(moto_url, bucket, "prune/blobs/")
    # What is left still makes B's image on a fresh machine.
    c = Run(cfg_b, tmp_path / "cache-c").ok()
    assert c.result["cached"] and c.result["sha256"] == b.result["sha256"]


def test_doctor_checks_the_bucket_is_reachable_and_writable(fixture_iso: Path, bucket: str, moto_url: str,  # noqa: F811
                                                           tmp_path: Path) -> None:
    good = pim_cli("doctor", "--config", str(config(tmp_path / "ok", fixture_iso, f"s3://{bucket}/team", moto_url)))
    assert f"ok    remote cache s3://{bucket}/team: readable and writable" in good.stdout, good.stdout
    assert not keys_under(moto_url, bucket, "team/doctor/")  # the probe is removed
    missing = pim_cli("doctor", "--config", str(config(tmp_path / "no", fixture_iso, "s3://no-such-bucket-pim", moto_url)))
    assert missing.returncode == 1
    assert "FAIL  remote cache: remote cache s3://no-such-bucket-pim" in missing.stdout, missing.stdout


# ---------------------------------------------------------------- IaC front ends

def test_pulumi_create_on_a_cold_machine_pulls_instead_of_building(machine_a: Run, fixture_iso: Path, bucket: str,
                                                                   moto_url: str, runtime_root: Path,  # noqa: F811
                                                                   tmp_path: Path) -> None:
    from pim.pulumi_provider.image import ImageProvider
    from pim.pulumi_provider.inputs import IMAGE_OUTPUTS
    from tests.pulumi.grpc_client import DynamicServer, provider_env, with_provider

    cache = tmp_path / "cache-b"
    cfg = config(tmp_path / "b", fixture_iso, f"s3://{bucket}/team", moto_url)
    server = DynamicServer(provider_env(PIM_CACHE_DIR=str(cache), XDG_RUNTIME_DIR=str(runtime_root)),
                           "pulumi-python:dynamic/pim:Image").start()
    try:
        server.configure({})
        props = with_provider({"config": str(cfg), "image": "e2e", "delete_artifact": False,
                               **dict.fromkeys(IMAGE_OUTPUTS)}, ImageProvider())
        checked, failures = server.check("e2e", {}, props)
        assert failures == [] and not list((cache / "objects").glob("*"))  # a preview pulls nothing
        id_, outs = server.create("e2e", checked)
    finally:
        server.stop()
    assert id_ == machine_a.result["key"] and outs["sha256"] == machine_a.result["sha256"]
    assert Path(outs["path"]).parent.parent == cache / "objects"
    assert "pulled final" in server.log and "starting QEMU" not in server.log


def test_terraform_apply_on_a_cold_machine_pulls_instead_of_building(machine_a: Run, fixture_iso: Path, bucket: str,
                                                                     moto_url: str, runtime_root: Path,  # noqa: F811
                                                                     tmp_path: Path) -> None:
    from tests.tofu.tf import TERRAFORM, Terraform

    if TERRAFORM is None:
        pytest.skip("no terraform binary on PATH (install Terraform >= 1.0)")
    cache = tmp_path / "cache-b"
    config(tmp_path / "pim", fixture_iso, f"s3://{bucket}/team", moto_url)
    (tmp_path / "main.tf").write_text(
        'terraform {\n  required_providers {\n    pim = { source = "pim.invalid/pim/pim" }\n  }\n}\n'
        'resource "pim_image" "e2e" {\n  config = "pim/pim.yaml"\n  image  = "e2e"\n}\n'
        'output "path" { value = pim_image.e2e.path }\noutput "sha256" { value = pim_image.e2e.sha256 }\n')
    tf = Terraform(tmp_path, tmp_path / "sandbox", {"PIM_CACHE_DIR": str(cache), "XDG_RUNTIME_DIR": str(runtime_root),
                                                    "TF_LOG_PROVIDER": "INFO"})
    plan = tf("plan", "-detailed-exitcode", ok=(2,)).stdout
    assert machine_a.result["key"] in plan
    assert not list((cache / "objects").glob("*"))  # a plan answers from the key alone
    applied = tf("apply", "-auto-approve")
    assert "pulled final" in applied.stdout + applied.stderr
    assert "starting QEMU" not in applied.stdout + applied.stderr
    outputs = json.loads(tf("output", "-json").stdout)
    assert outputs["sha256"]["value"] == machine_a.result["sha256"]
    assert Path(outputs["path"]["value"]).read_bytes() == Path(machine_a.result["path"]).read_bytes()


# ---------------------------------------------------------------- failures and races

def test_an_unreachable_remote_is_a_warning_and_the_build_still_succeeds(machine_a: Run, fixture_iso: Path,
                                                                         pim_cache: Path, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    b = Run(config(tmp_path / "a", fixture_iso, "s3://team-cache", dead), pim_cache).ok()
    assert b.result["key"] == machine_a.result["key"]
    warnings = [e["message"] for e in b.events if e["kind"] == "warning"]
    assert any("remote cache s3://team-cache" in w and "next build pushes it" in w for w in warnings), warnings


def test_an_index_that_names_another_key_is_not_trusted(machine_a: Run, fixture_iso: Path, pim_cache: Path,
                                                        bucket: str, moto_url: str, tmp_path: Path) -> None:  # noqa: F811
    url = f"s3://{bucket}/swapped"
    Run(config(tmp_path / "a", fixture_iso, url, moto_url), pim_cache).ok()
    final, client = machine_a.result["key"], s3(moto_url)
    index = json.loads(client.get_object(Bucket=bucket, Key=f"swapped/manifests/{final}.json")["Body"].read())
    other = "0" * 64
    index["manifest"]["key"] = other  # an object published under another key's name
    client.put_object(Bucket=bucket, Key=f"swapped/manifests/{final}.json", Body=json.dumps(index).encode())
    b = Run(config(tmp_path / "b", fixture_iso, url, moto_url, push=False), tmp_path / "cache-b").ok()
    warnings = [e["message"] for e in b.events if e["kind"] == "warning"]
    assert any(f"says it is {other[:12]}" in w for w in warnings), warnings
    assert b.began()["final"] is False and b.result["key"] == final


def test_two_machines_pushing_one_key_at_once_leave_one_consistent_object(
        machine_a: Run, pim_cache: Path, bucket: str, moto_url: str, tmp_path: Path) -> None:  # noqa: F811
    """Two builds of the same install key (same inputs, different bytes) pushed at the
    same moment: one index wins, it names only its own blobs, and a pull gets that build."""
    import shutil
    import threading

    from pim.engine.events import Emitter
    from pim.engine.remote.s3 import Bucket
    from pim.engine.remote.spec import CacheSpec
    from pim.engine.remote.transfer import pull, push
    from pim.engine.store.manifest import Manifest
    from pim.engine.store.objects import Store

    a = Store(pim_cache)
    install = json.loads(Path(machine_a.result["manifest"]).read_text())["lineage"]["install"]["key"]
    other = Store(tmp_path / "other")  # "another machine's" build of that key: other bytes, another id
    staging = other.root / "tmp" / "copy"
    shutil.copytree(a.object(install), staging)
    (staging / "done").unlink()
    with open(staging / "disk.qcow2", "ab") as f:
        f.write(b"\0" * 512)
    other.publish(staging, Manifest.model_validate({**a.manifest(install).model_dump(), "id": ""}))
    assert other.manifest(install).id != a.manifest(install).id

    spec = CacheSpec(remote=f"s3://{bucket}/race", endpoint_url=moto_url)
    reports: dict[str, Any] = {}
    start = threading.Barrier(2)

    def run(name: str, store: Store) -> None:
        start.wait()
        try:
            reports[name] = push(Bucket(spec), store, install, Emitter())
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            reports[name] = e

    threads = [threading.Thread(target=run, args=(n, st)) for n, st in (("a", a), ("other", other))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(isinstance(r, BaseException) for r in reports.values()), reports
    index = json.loads(s3(moto_url).get_object(Bucket=bucket, Key=f"race/manifests/{install}.json")["Body"].read())
    winner, loser = ("a", "other") if index["manifest"]["id"] == a.manifest(install).id else ("other", "a")
    winner_store = a if winner == "a" else other
    # The loser knows it lost: its object is held back, so nothing built on it is pushed.
    assert install in reports[loser].held_back and install not in reports[loser].pushed
    assert install in reports[winner].pushed + reports[winner].present
    assert {b["sha256"] for b in index["files"].values()} == {
        hashlib.sha256((winner_store.object(install) / n).read_bytes()).hexdigest() for n in index["files"]}
    import contextlib

    fresh = Store(tmp_path / "fresh")
    with contextlib.ExitStack() as held:
        got = pull(Bucket(spec), fresh, install, Emitter(), held)
    assert got is not None and got.id == winner_store.manifest(install).id
    assert (fresh.object(install) / "disk.qcow2").read_bytes() == \
        (winner_store.object(install) / "disk.qcow2").read_bytes()


def test_tofu_external_in_build_mode_pulls_on_a_cold_machine(machine_a: Run, fixture_iso: Path, bucket: str,
                                                             moto_url: str, tmp_path: Path) -> None:  # noqa: F811
    cfg = config(tmp_path / "b", fixture_iso, f"s3://{bucket}/team", moto_url)
    cache = tmp_path / "cache-b"
    query = {"config": str(cfg), "image": "e2e", "mode": "build", "cache_dir": str(cache)}
    lookup = subprocess.run([sys.executable, "-m", "pim.cli.main", "tofu", "external"], capture_output=True, text=True,
                            input=json.dumps({**query, "mode": "lookup"}), timeout=300)
    assert lookup.returncode == 2 and "is not built" in lookup.stderr  # lookup (plan time) stays local
    out = subprocess.run([sys.executable, "-m", "pim.cli.main", "tofu", "external"], capture_output=True, text=True,
                         input=json.dumps(query), timeout=300)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["sha256"] == machine_a.result["sha256"] and answer["key"] == machine_a.result["key"]
    assert "started" not in out.stderr  # no stage ran: the final object was pulled
    assert sorted(p.name for p in (cache / "objects").iterdir()) == [machine_a.result["key"]]


def test_ctrl_c_during_a_pull_publishes_nothing_and_leaves_no_scratch(machine_a: Run, fixture_iso: Path, bucket: str,
                                                                      moto_url: str, tmp_path: Path) -> None:  # noqa: F811
    # A step of its own: no final or provision object of this build is in the bucket yet
    # (an earlier test pushed one for STEP), so the pull starts at the install stage.
    step = [{"type": "shell", "name": "ctrl-c", "inline": f"echo {uuid.uuid4().hex}"}]
    cfg = config(tmp_path / "b", fixture_iso, f"s3://{bucket}/team", moto_url, provision=step)
    cache = tmp_path / "cache-b"
    proc = Run(cfg, cache, popen=True).proc
    assert proc.stdout is not None
    sent = False
    for line in proc.stdout:  # the install disk (hundreds of MiB) is coming in
        event = json.loads(line)
        if event["kind"] == "progress" and "pulling install" in event.get("message", ""):
            proc.send_signal(signal.SIGINT)
            sent = True
            break
    assert sent, "the build never pulled its install stage"
    assert proc.wait(timeout=60) == 130
    assert not list((cache / "objects").iterdir())
    assert not list((cache / "tmp").iterdir())
