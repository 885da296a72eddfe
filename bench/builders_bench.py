"""Remote builder benchmark, one run, against a real sshd on 127.0.0.1 (tests/sshd.py)
whose builder has its own home, store and runtime folder:

- a cold build of the fixture image on this machine, and the same spec (its own cold
  key) built on the remote builder with the artifact fetched back: the remote build's
  wall time against the local one (target <= 1.15x);
- the artifact fetch (`Connection.get`: streamed, sha256-checked, resumable) against a
  plain copy of the same file over the same SSH connection (`cat` on an exec channel,
  and paramiko's SFTP get) (target >= 0.8x);
- three images built by `pim build A B C` on two builders (local and remote,
  max_jobs 1 each), against the same three built one after another here: the
  makespan ratio.

Each cold build gets a fresh store on both sides, so nothing is shared between them;
both sides have their accelerator verdict (remembered per boot) before the timing starts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml
from common import fixture_iso, make_config

from tests import sshd  # noqa: E402  (common puts the repository on sys.path)


def pim_build(cfg: Path, cache: Path, *args: str) -> tuple[float, list[dict]]:
    exe = Path(sys.executable).with_name("pim")
    t0 = time.perf_counter()
    proc = subprocess.run([str(exe), "build", *args, "-c", str(cfg), "--json"], capture_output=True, text=True,
                          env={**os.environ, "PIM_CACHE_DIR": str(cache)})
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"pim build {' '.join(args)} failed: {proc.stderr[-2000:]}")
    return took, [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def config(folder: Path, iso: Path, host: sshd.BuilderHost, images: list[str], **builders: dict) -> Path:
    cfg = make_config(folder, iso, provision=[{"type": "shell", "inline": "echo benchmark > /root/bench"}],
                      vars={"extra": f"# {uuid.uuid4().hex}"})  # a cold key of its own
    data = yaml.safe_load(cfg.read_text())
    base = data["images"].pop("e2e")
    data["images"] = {name: dict(base) for name in images}
    data["builders"] = builders or {"remote": host.builder()}
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    return cfg


def fresh_builder_store(host: sshd.BuilderHost) -> None:
    shutil.rmtree(host.cache)
    host.cache.mkdir()


def transfer(host: sshd.BuilderHost, artifact: Path, sha: str) -> None:
    from pim.engine.builders.spec import BuilderSpec, resolve
    from pim.engine.builders.ssh import Connection

    size = artifact.stat().st_size
    rates: dict[str, list[float]] = {"pim fetch": [], "cat": [], "sftp get": []}
    with Connection(resolve("b", BuilderSpec(**host.builder()), {})) as conn, tempfile.TemporaryDirectory() as d:
        for _ in range(3):
            out = Path(d) / "x"
            t0 = time.perf_counter()
            conn.get(str(artifact), out, sha, size)
            rates["pim fetch"].append(size / (time.perf_counter() - t0))
            out.unlink()
            t0 = time.perf_counter()
            conn.sftp.get(str(artifact), str(out))
            rates["sftp get"].append(size / (time.perf_counter() - t0))
            out.unlink()
            chan = conn.client.get_transport().open_session()
            t0 = time.perf_counter()
            chan.exec_command(f"cat {artifact}")
            with open(out, "wb") as f:
                while chunk := chan.recv(1 << 20):
                    f.write(chunk)
            rates["cat"].append(size / (time.perf_counter() - t0))
            chan.close()
            out.unlink()
    best = {k: max(v) / 2**20 for k, v in rates.items()}
    print(f"\nartifact transfer ({size / 2**20:.0f} MiB, same SSH connection, best of 3):")
    for k, v in best.items():
        print(f"  {k:10} {v:7.1f} MiB/s")
    print(f"  pim fetch / cat      = {best['pim fetch'] / best['cat']:.2f}  (target >= 0.8)")
    print(f"  pim fetch / sftp get = {best['pim fetch'] / best['sftp get']:.2f}")


def main() -> None:
    iso = fixture_iso()
    host = sshd.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            # 1. one image, cold, here and there. Both sides probe their accelerator first
            # (`pim builders check`), as a machine that has built since boot has its verdict.
            cfg = config(work / "one", iso, host, ["e2e"])
            subprocess.run([str(Path(sys.executable).with_name("pim")), "builders", "check", "-c", str(cfg)],
                           check=True, capture_output=True)
            local_s, _ = pim_build(cfg, work / "local-cache", "e2e", "--local")
            fresh_builder_store(host)
            remote_s, events = pim_build(cfg, work / "client-cache", "e2e", "--builder", "remote")
            result = events[-1]["data"]
            print(f"cold build here:               {local_s:6.1f} s")
            print(f"cold build on the builder:     {remote_s:6.1f} s  (fetched back; ratio "
                  f"{remote_s / local_s:.2f}, target <= 1.15)")
            there = host.cache / "objects" / result["key"] / "disk.qcow2"
            transfer(host, there, result["sha256"])
            # 3. three images: two builders at once against one after another here
            names = ["ba", "bb", "bc"]
            cfg3 = config(work / "three", iso, host, names, remote={**host.builder(), "max_jobs": 1},
                          local={"max_jobs": 1})
            data = yaml.safe_load(cfg3.read_text())
            for name, where in zip(names, ("local", "remote", "remote")):
                data["images"][name]["builder"] = where
            cfg3.write_text(yaml.safe_dump(data, sort_keys=False))
            fresh_builder_store(host)
            both, _ = pim_build(cfg3, work / "three-cache", *names)
            one_by_one = sum(pim_build(cfg3, work / "serial-cache", n, "--local")[0] for n in names)
            print(f"\nthree images, two builders (max_jobs 1 each): makespan {both:6.1f} s")
            print(f"three images one after another here:           {one_by_one:6.1f} s  "
                  f"(ratio {both / one_by_one:.2f})")
    finally:
        host.stop()


if __name__ == "__main__":
    main()
