"""Proxmox targets on several nodes, and PVE fetching the image itself (download-url),
against the TLS fake of the PVE API (pve_fake.py), every request checked against PVE's
published API schema."""

from __future__ import annotations

import functools
import http.server
import logging
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from pim.engine.deploy.model import DeployError
from pim.engine.deploy.proxmox import backend as proxmox
from pim.engine.deploy.proxmox.params import upload_name
from pim.engine.errors import InputError
from tests.deploy.conftest import Disk, Recorder, pve_target

NODES = ["pve1", "pve2", "pve3"]


@pytest.fixture
def cluster(tmp_path: Path, pve_cert: tuple[str, str]) -> Iterator[Any]:
    """A three-node cluster: `local` is each node's own, `cephfs` is shared."""
    from tests.deploy.pve_fake import FakePve

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    fake = FakePve(tmp_path / "pve", nodes=NODES).start(*pve_cert)
    try:
        yield fake
    finally:
        fake.stop()
        assert fake.crashes == []


@pytest.fixture
def web(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A plain HTTP server on 127.0.0.1 serving a folder, as a user's image host would."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", root
    finally:
        server.shutdown()
        server.server_close()


def templates(fake: Any, key: str) -> dict[int, str]:
    """{vmid: node} of this build's templates."""
    return {vmid: fake.vm_node[vmid] for vmid, cfg in fake.vms.items()
            if f"pim-{key}" in str(cfg.get("tags", "")) and cfg.get("template") == 1}


def test_one_template_per_node_from_one_upload_per_node(cluster: Any, pve_env: str, pve_cert: tuple, disk: Disk,
                                                       events: Recorder) -> None:
    target = pve_target(cluster, pve_cert[0], nodes=NODES)
    result = proxmox.deploy(target, disk.image, events.emitter, "pve")
    vmids = result.ids()["vmids"]
    assert list(vmids) == NODES and len(set(vmids.values())) == 3
    assert templates(cluster, disk.image.key) == {v: n for n, v in vmids.items()}
    volid = f"local:import/{upload_name(disk.image)}"
    for node in NODES:  # `local` is not shared: each node got its own copy, and its template imports it
        assert volid in cluster.node_files[node]
        assert cluster.vms[vmids[node]]["scsi0"].startswith(f"local-lvm:vm-{vmids[node]}-disk-0,")
        assert cluster.count("POST", rf"/nodes/{node}/storage/local/upload$") == 1
    assert result.ids()["vmid"] == vmids["pve1"] and result.ids()["node"] == "pve1"
    assert result.stats["bytes_sent"] == 3 * disk.image.size
    assert cluster.schema_errors == []

    again = proxmox.deploy(target, disk.image, events.emitter, "pve")
    assert again.created is False and again.ids()["vmids"] == vmids
    assert cluster.count("POST", r"/upload$") == 3 and cluster.count("POST", r"/qemu$") == 3
    assert proxmox.exists(target, disk.image, events.emitter).ids()["vmids"] == vmids

    removed = proxmox.delete(target, disk.image, events.emitter)
    assert sorted(removed) == sorted([f"vm/{v}" for v in vmids.values()] + [volid, f"pve2/{volid}", f"pve3/{volid}"])
    assert cluster.vms == {} and all(files == {} for files in cluster.node_files.values())


def test_a_shared_upload_storage_gets_the_image_once_for_all_nodes(cluster: Any, pve_env: str, pve_cert: tuple,
                                                                   disk: Disk, events: Recorder) -> None:
    target = pve_target(cluster, pve_cert[0], nodes=NODES, upload_storage="cephfs")
    result = proxmox.deploy(target, disk.image, events.emitter)
    assert cluster.count("POST", r"/upload$") == 1 and result.stats["bytes_sent"] == disk.image.size
    volid = f"cephfs:import/{upload_name(disk.image)}"
    assert list(cluster.shared_files) == [volid]
    assert set(result.resources["volumes"].values()) == {volid}
    assert len(templates(cluster, disk.image.key)) == 3
    assert cluster.schema_errors == []
    proxmox.delete(target, disk.image, events.emitter)
    assert cluster.vms == {} and cluster.shared_files == {}


def test_a_node_that_lost_its_template_gets_it_back_alone(cluster: Any, pve_env: str, pve_cert: tuple, disk: Disk,
                                                          events: Recorder) -> None:
    target = pve_target(cluster, pve_cert[0], nodes=NODES)
    first = proxmox.deploy(target, disk.image, events.emitter).ids()["vmids"]
    del cluster.vms[first["pve2"]]  # removed by hand on pve2; its upload is still there
    assert proxmox.exists(target, disk.image, events.emitter) is None  # drift: not every node has it
    again = proxmox.deploy(target, disk.image, events.emitter)
    assert again.created and again.stats["nodes_made"] == ["pve2"] and again.stats["bytes_sent"] == 0
    vmids = again.ids()["vmids"]
    assert vmids["pve1"] == first["pve1"] and vmids["pve3"] == first["pve3"]
    assert cluster.vm_node[vmids["pve2"]] == "pve2" and cluster.vms[vmids["pve2"]]["template"] == 1
    assert [cluster.count("POST", rf"/nodes/{n}/qemu$") for n in NODES] == [1, 2, 1]


def test_pve_fetches_the_image_from_image_url_and_nothing_is_uploaded(cluster: Any, pve_env: str, pve_cert: tuple,
                                                                      disk: Disk, events: Recorder,
                                                                      web: tuple[str, Path]) -> None:
    url, root = web
    (root / upload_name(disk.image)).write_bytes(disk.image.path.read_bytes())
    target = pve_target(cluster, pve_cert[0], nodes=["pve1", "pve2"], image_url=url + "/{filename}")
    result = proxmox.deploy(target, disk.image, events.emitter)
    assert cluster.count("POST", r"/upload$") == 0 and result.stats["bytes_sent"] == 0
    want = f"{url}/{upload_name(disk.image)}"
    assert sorted(cluster.downloads) == [("pve1", want), ("pve2", want)]
    assert len(templates(cluster, disk.image.key)) == 2
    assert cluster.schema_errors == []  # download-url's parameters are PVE's own


def test_an_image_url_serving_other_bytes_makes_no_template(cluster: Any, pve_env: str, pve_cert: tuple,
                                                            disk: Disk, events: Recorder,
                                                            web: tuple[str, Path]) -> None:
    url, root = web
    (root / "stale.qcow2").write_bytes(b"not this build" * 100)
    target = pve_target(cluster, pve_cert[0], image_url=url + "/stale.qcow2")
    with pytest.raises(DeployError, match="checksum mismatch"):
        proxmox.deploy(target, disk.image, events.emitter)
    assert cluster.vms == {} and cluster.files == {}


def test_several_nodes_or_image_url_need_pve_84(tmp_path: Path, pve_cert: tuple, pve_env: str, disk: Disk,
                                                events: Recorder) -> None:
    from tests.deploy.pve_fake import FakePve

    fake = FakePve(tmp_path / "pve", version="8.3.2", nodes=["a1", "a2"]).start(*pve_cert)
    try:
        for kw in (dict(nodes=["a1", "a2"]), dict(image_url="https://images.invalid/{filename}")):
            with pytest.raises(InputError, match=r"needs PVE 8\.4"):
                proxmox.deploy(pve_target(fake, pve_cert[0], **kw), disk.image, events.emitter)
        assert fake.vms == {} and fake.count("POST", r"/upload$|/download-url$") == 0
    finally:
        fake.stop()


def test_a_node_the_cluster_does_not_have_is_named(cluster: Any, pve_env: str, pve_cert: tuple, disk: Disk,
                                                   events: Recorder) -> None:
    target = pve_target(cluster, pve_cert[0], nodes=["pve1", "pve9"])
    with pytest.raises(DeployError, match="pve9"):
        proxmox.deploy(target, disk.image, events.emitter)


def test_image_url_must_hold_no_credentials_and_well_formed_placeholders(cluster: Any, pve_cert: tuple) -> None:
    from pydantic import ValidationError

    for url, says in [("https://me:pw@images.invalid/{filename}", "must not hold a user or password"),
                      ("https://images.invalid/{filename}?sig=a}b", "literal brace"),
                      ("https://images.invalid/{0}", "unknown placeholder")]:
        with pytest.raises(ValidationError, match=says):
            pve_target(cluster, pve_cert[0], image_url=url)


def test_a_signed_image_urls_signature_stays_out_of_events_and_errors(cluster: Any, pve_env: str, pve_cert: tuple,
                                                                      disk: Disk, events: Recorder,
                                                                      web: tuple[str, Path]) -> None:
    url, root = web
    (root / "stale.qcow2").write_bytes(b"other bytes" * 100)
    signature = "X-Sig=0123456789abcdef0123456789abcdef"
    target = pve_target(cluster, pve_cert[0], image_url=f"{url}/stale.qcow2?{signature}")
    with pytest.raises(DeployError) as info:
        proxmox.deploy(target, disk.image, events.emitter)
    assert "checksum mismatch" in str(info.value)
    assert signature not in str(info.value) and signature not in " ".join(info.value.tail)
    assert signature not in events.text() and "stale.qcow2?…" in events.text()
    assert cluster.downloads == [("pve1", f"{url}/stale.qcow2?{signature}")]  # PVE itself got the real URL


def test_image_url_still_needs_the_builds_manifest(cluster: Any, pve_env: str, pve_cert: tuple, disk: Disk,
                                                   events: Recorder) -> None:
    from dataclasses import replace

    target = pve_target(cluster, pve_cert[0], image_url="https://images.invalid/{filename}")
    with pytest.raises(InputError, match="no build of demo"):
        proxmox.deploy(target, replace(disk.image, path=None), events.emitter)
    assert cluster.downloads == [] and cluster.vms == {}
