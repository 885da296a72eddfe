"""EBS direct upload benchmark against a local moto server.

Prints, for one image: the local read rate of its data (the same qcow2 -> raw block
reading the upload does, without sending anything), the EBS direct upload rate to
moto at several degrees of parallelism, their ratio, and how much of the disk was
skipped as zero blocks (never sent). moto runs as its own process on 127.0.0.1 (so
client and server do not share one interpreter lock); the upload figures measure
PIM plus moto's HTTP server on this machine, not AWS.

    cd bench && ../.venv/bin/python deploy_bench.py [--virtual-gib 4] [--data-mib 256]
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pim.engine.deploy.aws import direct as aws  # noqa: E402
from pim.engine.deploy.aws.blocks import EBS_BLOCK, open_raw  # noqa: E402
from pim.engine.deploy.model import BuiltImage  # noqa: E402
from pim.engine.deploy.spec import AwsTarget  # noqa: E402
from pim.engine.events import Emitter  # noqa: E402

MIB = 1 << 20


def make_image(folder: Path, virtual_gib: int, data_mib: int) -> BuiltImage:
    """Random data in 16 MiB runs spread over the disk, plus 32 MiB of written zeros."""
    raw, qcow2 = folder / "bench.raw", folder / "bench.qcow2"
    size = virtual_gib << 30
    runs = max(1, data_mib // 16)
    with open(raw, "wb") as f:
        f.truncate(size)
        for i in range(runs):
            f.seek(i * (size // runs))
            f.write(os.urandom(16 * MIB))
        f.seek(size - 64 * MIB)
        f.write(bytes(32 * MIB))
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    raw.unlink()
    digest = hashlib.sha256()
    with open(qcow2, "rb") as f:
        while chunk := f.read(8 * MIB):
            digest.update(chunk)
    key = hashlib.sha256(f"bench-{time.time()}".encode()).hexdigest()
    return BuiltImage("bench", key, qcow2, digest.hexdigest(), qcow2.stat().st_size, size)


def local_read(image: BuiltImage) -> tuple[float, dict]:
    assert image.path
    t0 = time.perf_counter()
    with open_raw(image.path) as disk:
        for _ in disk.blocks(EBS_BLOCK):
            pass
        stats = disk.stats.to_json()
    return time.perf_counter() - t0, stats


def upload(url: str, image: BuiltImage, parallel: int) -> tuple[float, dict]:
    target = AwsTarget(type="aws", region="us-east-1", endpoint_url=url, parallel=parallel)
    clients = aws.Clients(target)
    t0 = time.perf_counter()
    sid, stats = aws.upload_direct(clients, target, image, Emitter(lambda e: None))
    seconds = time.perf_counter() - t0
    aws.delete_snapshot(clients.get("ec2", "us-east-1"), sid)
    return seconds, stats


def start_moto() -> tuple[subprocess.Popen, str]:
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto_server did not start")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--virtual-gib", type=int, default=4)
    parser.add_argument("--data-mib", type=int, default=256)
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 4, 8])
    args = parser.parse_args()
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "MOTO_EC2_LOAD_DEFAULT_AMIS": "false", "AWS_EC2_METADATA_DISABLED": "true"})
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server, url = start_moto()
    try:
        with tempfile.TemporaryDirectory(prefix="pim-deploy-bench-") as tmp:
            image = make_image(Path(tmp), args.virtual_gib, args.data_mib)
            upload(url, image, 1)  # warm-up: moto builds its backends on first use
            runs = [local_read(image) for _ in range(3)]
            read_s, stats = sorted(runs, key=lambda r: r[0])[1]  # the median of three
            data_mb = stats["blocks_data"] * EBS_BLOCK / 1e6
            read_rate = data_mb / read_s
            zero_bytes = stats["blocks_zero"] * EBS_BLOCK
            print(f"image: {args.virtual_gib} GiB virtual, qcow2 {image.size / 1e6:.0f} MB, "
                  f"{stats['blocks_data']} data blocks of {stats['blocks_total']}")
            print(f"zero blocks skipped: {stats['blocks_zero']} ({zero_bytes / 1e9:.2f} GB, "
                  f"{100 * zero_bytes / stats['virtual_size']:.1f} % of the disk; "
                  f"{stats['virtual_size'] - stats['bytes_read']:,} bytes never even read)")
            print(f"local read of the data blocks: {read_s:.2f} s, {read_rate:.0f} MB/s")
            for parallel in args.parallel:
                up_s, up_stats = upload(url, image, parallel)
                rate = up_stats["bytes_sent"] / 1e6 / up_s
                print(f"EBS direct upload to moto, parallel {parallel}: {up_s:.2f} s, {rate:.0f} MB/s, "
                      f"ratio to local read {rate / read_rate:.2f}")
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
