"""A connection dropped in the middle of an upload: retried, or a clear error that leaves
no half-registered AMI or template behind. The drop is real: a TCP proxy on 127.0.0.1
resets the connection while the request body is still being sent."""

from __future__ import annotations

from typing import Any, Iterator
from urllib.parse import urlparse

import pytest

from pim.engine.deploy.aws import amis, common, direct
from pim.engine.deploy.aws import backend as aws_mod
from pim.engine.deploy.proxmox import backend as proxmox
from pim.engine.deploy.model import DeployError
from pim.engine.retry import EBS_BLOCK, Policy
from tests.deploy.conftest import Disk, Recorder, aws_target, boto, pve_target
from tests.deploy.proxy import DropProxy
from tests.deploy.test_aws import nonzero_blocks, snapshot_blocks

KIB = 1024


@pytest.fixture
def proxies() -> Iterator[list[DropProxy]]:
    made: list[DropProxy] = []
    yield made
    for p in made:
        p.stop()


def _proxy(proxies: list[DropProxy], url: str, drops: int) -> DropProxy:
    proxy = DropProxy(urlparse(url).port or 0, after=256 * KIB, drops=drops)
    proxies.append(proxy)
    return proxy


def test_aws_blocks_cut_off_mid_upload_are_retried(aws: str, disk: Disk, events: Recorder,
                                                   proxies: list[DropProxy]) -> None:
    proxy = _proxy(proxies, aws, drops=3)
    result = aws_mod.deploy(aws_target(f"http://127.0.0.1:{proxy.port}"), disk.image, events.emitter)
    assert proxy.dropped == 3
    sid = result.resources["regions"]["us-east-1"]["snapshot"]
    assert snapshot_blocks(aws, sid) == nonzero_blocks(disk.raw)


def test_aws_block_cut_off_more_often_than_botocore_retries_still_arrives(aws: str, disk: Disk, events: Recorder,
                                                                          proxies: list[DropProxy]) -> None:
    """One block loses all 6 of botocore's tries and 2 more: EBS_BLOCK tries the block again, whole."""
    drops = common.MAX_ATTEMPTS + 2
    proxy = _proxy(proxies, aws, drops=drops)
    # one block at a time, so every cut falls on the first data block
    result = aws_mod.deploy(aws_target(f"http://127.0.0.1:{proxy.port}", parallel=1), disk.image, events.emitter)
    assert proxy.dropped == drops
    sid = result.resources["regions"]["us-east-1"]["snapshot"]
    assert snapshot_blocks(aws, sid) == nonzero_blocks(disk.raw)
    assert f"; try 2 of {EBS_BLOCK.attempts} in " in events.text()


def test_aws_upload_that_keeps_failing_ends_clean(aws: str, disk: Disk, events: Recorder, proxies: list[DropProxy],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "MAX_ATTEMPTS", 3)  # botocore's standard mode: 3 tries per call
    # EBS_BLOCK's tries, with short waits so the test is quick
    monkeypatch.setattr(direct, "BLOCK_RETRY", Policy("ebs-block-quick", EBS_BLOCK.attempts, 0.01, 0.05))
    proxy = _proxy(proxies, aws, drops=10 ** 6)
    with pytest.raises(DeployError, match=rf"PutSnapshotBlock \d+ failed: .*(Connection|connection).*"
                                          rf"gave up after {EBS_BLOCK.attempts} tries"):
        aws_mod.deploy(aws_target(f"http://127.0.0.1:{proxy.port}", parallel=1), disk.image, events.emitter)
    # the block that failed was sent 3 (botocore) x 5 (EBS_BLOCK) times, and no more than that
    assert 3 * EBS_BLOCK.attempts <= proxy.dropped <= 2 * 3 * EBS_BLOCK.attempts
    ec2 = boto(aws, "ec2")  # straight to moto, not through the proxy
    assert amis.find_images(ec2, disk.image) == []
    assert amis.tagged_snapshots(ec2, disk.image.key) == []


def test_pve_upload_cut_off_is_retried(pve: Any, pve_env: str, pve_cert: tuple, disk: Disk, events: Recorder,
                                       proxies: list[DropProxy]) -> None:
    proxy = _proxy(proxies, pve.url, drops=1)
    target = pve_target(pve, pve_cert[0], api_url=f"https://127.0.0.1:{proxy.port}")
    result = proxmox.deploy(target, disk.image, events.emitter)
    assert proxy.dropped == 1 and result.created
    assert "upload interrupted" in events.text()
    assert pve.files[result.resources["volume"]]["size"] == disk.image.size
    assert pve.vms[result.resources["vmid"]]["template"] == 1


def test_pve_upload_that_keeps_failing_ends_clean(pve: Any, pve_env: str, pve_cert: tuple, disk: Disk,
                                                  events: Recorder, proxies: list[DropProxy]) -> None:
    proxy = _proxy(proxies, pve.url, drops=10 ** 6)
    target = pve_target(pve, pve_cert[0], api_url=f"https://127.0.0.1:{proxy.port}", upload_retries=2)
    with pytest.raises(DeployError, match="upload of .* failed 2 time"):
        proxmox.deploy(target, disk.image, events.emitter)
    assert pve.vms == {} and pve.files == {}
