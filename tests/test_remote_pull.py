"""Pulling from the remote cache trusts nothing the bucket says until it is checked:
real qemu-img images and moto's S3 server on 127.0.0.1, no QEMU guest."""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from pim.engine.events import Emitter, Event
from pim.engine.remote.s3 import Bucket
from pim.engine.remote.spec import CacheSpec
from pim.engine.remote.transfer import pull
from pim.engine.store.manifest import Manifest
from pim.engine.store.objects import Store
from tests.deploy.conftest import moto_url  # noqa: F401  (fixture)

KEY = "ab" * 32


@pytest.fixture
def bucket(moto_url: str) -> Bucket:  # noqa: F811
    import boto3

    name = f"pim-pull-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=moto_url).create_bucket(Bucket=name)
    return Bucket(CacheSpec(remote=f"s3://{name}/c", endpoint_url=moto_url))


def put_object(bucket: Bucket, files: dict[str, bytes], key: str = KEY, **index: Any) -> None:
    """An install object in the bucket, as a push would write it (or a hostile bucket could)."""
    blobs = {}
    for name, data in files.items():
        digest = hashlib.sha256(data).hexdigest()
        bucket.client.put_object(Bucket=bucket.name, Key=bucket.blob_key(digest), Body=data)
        blobs[name] = {"sha256": digest, "size": len(data)}
    manifest = {"stage": "install", "image": "web", "key": key, "id": "1" * 32}
    bucket.put_json(bucket.manifest_key(key), {"key": key, "stage": "install", "pushed": "2026-01-01T00:00:00+00:00",
                                               "manifest": manifest, "files": blobs, **index})


def qcow2(tmp_path: Path, *backing: str) -> bytes:
    path = tmp_path / f"{uuid.uuid4().hex}.qcow2"
    extra = ["-b", backing[0], "-F", "raw"] if backing else []
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *extra, str(path), "64M"], check=True)
    return path.read_bytes()


def run_pull(bucket: Bucket, store: Store) -> tuple[Manifest | None, list[str]]:
    seen: list[Event] = []
    with contextlib.ExitStack() as held:
        got = pull(bucket, store, KEY, Emitter(seen.append), held)
    return got, [e.message for e in seen if e.kind == "warning"]


def test_a_sound_object_is_pulled_with_its_key_file_private(bucket: Bucket, tmp_path: Path) -> None:
    disk = qcow2(tmp_path)
    put_object(bucket, {"disk.qcow2": disk, "build_key": b"-----BEGIN OPENSSH PRIVATE KEY-----\n"})
    store = Store(tmp_path / "store")
    got, warnings = run_pull(bucket, store)
    assert got is not None and got.id == "1" * 32 and warnings == []
    assert (store.object(KEY) / "disk.qcow2").read_bytes() == disk
    assert (store.object(KEY) / "build_key").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("name", ["../../evil", "/etc/evil", "..", "done"])
def test_a_file_name_that_leaves_the_object_folder_is_refused(bucket: Bucket, tmp_path: Path, name: str) -> None:
    put_object(bucket, {name: b"x"})
    store = Store(tmp_path / "store")
    got, warnings = run_pull(bucket, store)
    assert got is None and len(warnings) == 1, warnings
    assert not store.has(KEY) and not list(tmp_path.rglob("evil"))


def test_a_qcow2_that_points_at_a_host_file_is_refused(bucket: Bucket, tmp_path: Path) -> None:
    secret = tmp_path / "host-secret"
    secret.write_bytes(b"\0" * 512)
    put_object(bucket, {"disk.qcow2": qcow2(tmp_path, str(secret))})
    store = Store(tmp_path / "store")
    got, warnings = run_pull(bucket, store)
    assert got is None and any("refers to a file it may not" in w and str(secret) in w for w in warnings), warnings
    assert not store.has(KEY) and not list((store.root / "tmp").iterdir())


def test_a_missing_blob_is_a_miss_not_a_failed_remote(bucket: Bucket, tmp_path: Path) -> None:
    put_object(bucket, {"disk.qcow2": qcow2(tmp_path)})
    for page in bucket.client.get_paginator("list_objects_v2").paginate(Bucket=bucket.name, Prefix="c/blobs/"):
        for obj in page.get("Contents", []):
            bucket.client.delete_object(Bucket=bucket.name, Key=obj["Key"])
    got, warnings = run_pull(bucket, Store(tmp_path / "store"))
    assert got is None and any("disk.qcow2 is missing" in w for w in warnings), warnings


def test_an_index_that_is_not_json_is_reported(bucket: Bucket, tmp_path: Path) -> None:
    bucket.client.put_object(Bucket=bucket.name, Key=bucket.manifest_key(KEY), Body=b"{not json")
    got, warnings = run_pull(bucket, Store(tmp_path / "store"))
    assert got is None and any("is not JSON" in w for w in warnings), warnings
