"""Remote build cache benchmark, one run, against moto's S3 server on 127.0.0.1 (its
own process, as a real object store would be):

- a cold build of the fixture image with no remote cache, and another (its own cold
  key) that pushes each object as it is published: the difference is the push's
  overhead, as a share of the plain cold build;
- the same image pulled into an empty local cache by `pim build`, against that cold
  build (the target is <= 0.1x);
- the pull's throughput against a plain boto3 `download_file` of the same blob
  (parallel ranged GETs) in a process of its own (the target is >= 0.8x).

Targets: pull <= 0.1 x cold; push overhead <= 10 % of the cold build; pull
throughput >= 0.8 x plain boto3.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import fixture_iso, make_config

AWS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
       "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}

PLAIN_DOWNLOAD = """
import sys, time, boto3
c = boto3.client("s3", endpoint_url=sys.argv[1])
t0 = time.perf_counter()
c.download_file(sys.argv[2], sys.argv[3], sys.argv[4])
print(time.perf_counter() - t0)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build(cfg: Path, cache: Path, env: dict[str, str]) -> tuple[float, list[dict]]:
    """Run `pim build --json`; returns wall seconds and the events with their arrival time."""
    exe = Path(sys.executable).with_name("pim")
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(exe), "build", "e2e", "-c", str(cfg), "--json"], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **env, "PIM_CACHE_DIR": str(cache)})
    events = []
    assert proc.stdout is not None
    for line in proc.stdout:
        events.append({**json.loads(line), "at": time.perf_counter() - t0})
    if proc.wait() != 0:
        raise SystemExit(f"pim build failed: {events[-1] if events else ''}")
    return time.perf_counter() - t0, events


def main() -> None:
    iso = fixture_iso()
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **AWS})
    env = {**AWS}
    try:
        import boto3

        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        os.environ.update(AWS)
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="pim-bench")
        with tempfile.TemporaryDirectory(prefix="pim-bench-") as tmp:
            plain_cfg = make_config(Path(tmp) / "plain", iso, vars={"bench": f"plain {time.time()}"})
            cold, _ = build(plain_cfg, Path(tmp) / "plain-cache", env)
            cfg = make_config(Path(tmp) / "cfg", iso, vars={"bench": f"push {time.time()}"})  # a cold key too
            data = yaml.safe_load(cfg.read_text())
            data["cache"] = {"remote": "s3://pim-bench/bench", "endpoint_url": endpoint}
            cfg.write_text(yaml.safe_dump(data, sort_keys=False))

            total, events = build(cfg, Path(tmp) / "a", env)
            built = next(e["at"] for e in events if e["kind"] == "stage-end" and e["stage"] == "final")
            pushed = next(e.get("message", "") for e in events if e.get("message", "").startswith("pushed "))
            final = next(e for e in events if e["kind"] == "result")["data"]

            pull, pull_events = build(cfg, Path(tmp) / "b", env)
            began = next(e["at"] for e in pull_events if e.get("message", "").startswith("pulling final"))
            ended = next(e["at"] for e in pull_events if e.get("message", "").startswith("pulled final"))
            size = final["size"]

            dest = Path(tmp) / "plain.qcow2"
            plain = float(subprocess.run([sys.executable, "-c", PLAIN_DOWNLOAD, endpoint, "pim-bench",
                                          f"bench/blobs/sha256/{final['sha256']}", str(dest)],
                                         capture_output=True, text=True, check=True, env={**os.environ, **AWS}).stdout)
    finally:
        server.terminate()
        server.wait()

    mib = 1 << 20
    ours = ended - began
    print(f"cold build, no remote cache              {cold:7.1f} s   1.00x")
    print(f"cold build pushing as it goes            {total:7.1f} s   {total / cold:5.2f}x   ({pushed})")
    print(f"  of which after the final stage's end   {total - built:7.1f} s")
    print(f"pull into an empty cache (pim build)     {pull:7.1f} s   {pull / cold:5.2f}x   target <= 0.10x")
    print(f"pull of the final blob ({size / mib:.0f} MiB)       {ours:7.2f} s   {size / mib / ours:6.0f} MiB/s")
    print(f"plain boto3 download_file of that blob   {plain:7.2f} s   {size / mib / plain:6.0f} MiB/s")
    print(f"pull throughput vs plain boto3           {plain / ours:7.2f}x          target >= 0.80x")
    print(f"push overhead                            {(total - cold) / cold * 100:6.1f} %          target <= 10 %")


if __name__ == "__main__":
    main()
