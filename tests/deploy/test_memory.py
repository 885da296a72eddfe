"""Peak memory of a deploy of a 2 GiB image stays under 100 MB for both targets.

The image is 2 GiB of virtual disk holding 192 MiB of random data (incompressible,
so the qcow2 file itself is ~192 MiB) and a region of explicit zeros. The deploy
runs in a child process that reports its own peak RSS; the servers (moto, the PVE
fake) run here, so their memory is not counted. Reading the qcow2 (or its raw
form) into memory anywhere would blow the limit.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import BLOCK, MIB, Disk, boto, make_disk

LIMIT = 100_000_000  # bytes
GIB = 1 << 30

CHILD = r"""
import json, sys
from pathlib import Path
from pim.engine.deploy.model import BuiltImage
from pim.engine.deploy.spec import AwsTarget, ProxmoxTarget
from pim.engine.events import Emitter

args = json.loads(sys.argv[1])
image = BuiltImage(**{**args["image"], "path": Path(args["image"]["path"])})
if args["kind"] == "aws":
    import boto3
    from pim.engine.deploy.aws import backend
    target = AwsTarget(**args["target"])
else:
    import proxmoxer, requests_toolbelt
    from pim.engine.deploy.proxmox import backend
    target = ProxmoxTarget(**args["target"])
def hwm():  # peak RSS of this process image (ru_maxrss would include the forked parent's pages)
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1])
base = hwm()
result = backend.deploy(target, image, Emitter(lambda e: None))
peak = hwm()
print(json.dumps({"base_kib": base, "peak_kib": peak, "stats": result.stats, "resources": result.resources}))
"""


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Disk:
    chunk = 12 * MIB
    writes = [(i * 128 * MIB + 3 * MIB, os.urandom(chunk)) for i in range(16)]
    writes.append((2040 * MIB, bytes(4 * MIB)))  # allocated, all zeros: read, then skipped
    return make_disk(tmp_path_factory.mktemp("big"), "big", 2 * GIB, writes)


def _run_child(kind: str, image: Any, target: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    args = {"kind": kind, "image": {**dataclasses.asdict(image), "path": str(image.path)}, "target": target}
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, **env}, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_aws_upload_of_a_2gib_image_stays_under_100mb(aws: str, big: Disk) -> None:
    report = _run_child("aws", big.image, {"type": "aws", "region": "us-east-1", "endpoint_url": aws}, {})
    peak = report["peak_kib"] * 1024
    print(f"\nAWS: peak RSS {peak / 1e6:.1f} MB (after imports {report['base_kib'] * 1024 / 1e6:.1f} MB), "
          f"{report['stats']}")
    assert peak < LIMIT
    stats = report["stats"]
    assert stats["blocks_total"] == 2 * GIB // BLOCK
    assert stats["blocks_data"] == 16 * 12 * MIB // BLOCK  # the 4 MiB of written zeros were not sent
    sid = report["resources"]["regions"]["us-east-1"]["snapshot"]
    listed = boto(aws, "ebs").list_snapshot_blocks(SnapshotId=sid, MaxResults=10000)["Blocks"]
    assert len(listed) == stats["blocks_data"]


def test_pve_upload_of_a_2gib_image_stays_under_100mb(pve: Any, pve_env: str, pve_cert: tuple, big: Disk) -> None:
    from tests.deploy.pve_fake import TOKEN_ID

    target = {"type": "proxmox", "api_url": pve.url, "node": pve.node, "storage": "local-lvm",
              "token_id": TOKEN_ID, "ca_file": pve_cert[0]}
    report = _run_child("proxmox", big.image, target, {"PIM_PROXMOX_TOKEN_SECRET": pve_env})
    peak = report["peak_kib"] * 1024
    print(f"\nProxmox: peak RSS {peak / 1e6:.1f} MB (after imports {report['base_kib'] * 1024 / 1e6:.1f} MB), "
          f"uploaded {big.image.size / 1e6:.0f} MB")
    assert peak < LIMIT
    assert pve.files[report["resources"]["volume"]]["size"] == big.image.size
