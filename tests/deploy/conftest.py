"""Fixtures for deploy tests: small qcow2 images, a moto server and a Proxmox fake on 127.0.0.1."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from pim.engine.deploy.model import BuiltImage
from pim.engine.deploy.spec import AwsTarget, ProxmoxTarget
from pim.engine.events import Emitter, Event

MIB = 1 << 20
BLOCK = 512 * 1024


@dataclass
class Disk:
    image: BuiltImage
    raw: Path  # the raw disk the qcow2 stands for


def make_disk(folder: Path, name: str, virtual_size: int, writes: list[tuple[int, bytes]],
              compress: bool = False, lineage: dict | None = None, firmware: str = "bios") -> Disk:
    """A raw disk with these writes (the rest a hole), and its qcow2 as a BuiltImage."""
    folder.mkdir(parents=True, exist_ok=True)
    raw, qcow2 = folder / f"{name}.raw", folder / f"{name}.qcow2"
    with open(raw, "wb") as f:
        f.truncate(virtual_size)
        for offset, data in writes:
            f.seek(offset)
            f.write(data)
    argv = ["qemu-img", "convert", "-O", "qcow2"] + (["-c"] if compress else []) + [str(raw), str(qcow2)]
    subprocess.run(argv, check=True)
    digest = hashlib.sha256(qcow2.read_bytes()).hexdigest() if qcow2.stat().st_size < 64 * MIB else _sha256(qcow2)
    key = hashlib.sha256(f"{name}:{secrets.token_hex(8)}".encode()).hexdigest()
    lineage = lineage or {"iso": "ab" * 32, "install": {"key": "cd" * 32}, "final": {"key": key}}
    built = BuiltImage(name, key, qcow2, digest, qcow2.stat().st_size, virtual_size, "x86_64", firmware, lineage,
                       "5b" * 32, "9a" * 32)
    return Disk(built, raw)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MIB):
            h.update(chunk)
    return h.hexdigest()


def standard_writes() -> list[tuple[int, bytes]]:
    """Data, a block of explicit zeros (allocated, all zero), a partial block, a block at the end."""
    return [(BLOCK, os.urandom(BLOCK + 4096)), (5 * BLOCK, bytes(BLOCK)), (9 * BLOCK + 100, b"pim" * 1000),
            (31 * BLOCK, os.urandom(BLOCK))]


@pytest.fixture
def disk(tmp_path: Path) -> Disk:
    return make_disk(tmp_path / "img", "demo", 32 * BLOCK, standard_writes())


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.emitter = Emitter(self.events.append)

    def text(self) -> str:
        return "\n".join(f"{e.kind} {e.stage} {e.message} {e.data}" for e in self.events)


@pytest.fixture
def events() -> Recorder:
    return Recorder()


# ---------------------------------------------------------------- AWS (moto)

@pytest.fixture(scope="session")
def moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    empty = tmp_path_factory.mktemp("aws") / "none"
    empty.write_text("")
    saved = {k: os.environ.get(k) for k in _AWS_ENV}
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": str(empty),
                       "AWS_SHARED_CREDENTIALS_FILE": str(empty), "AWS_EC2_METADATA_DISABLED": "true",
                       # moto's public AMI catalogue takes seconds per region to load; nothing here needs it
                       "MOTO_EC2_LOAD_DEFAULT_AMIS": "false"})
    os.environ.pop("AWS_PROFILE", None)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_CONFIG_FILE",
            "AWS_SHARED_CREDENTIALS_FILE", "AWS_EC2_METADATA_DISABLED", "AWS_PROFILE", "MOTO_EC2_LOAD_DEFAULT_AMIS")


@pytest.fixture
def aws(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The session's moto server, with the EC2 rules moto lacks (`ec2_rules`) on every
    client the engine makes. Not reset between tests (that costs seconds per region):
    every test's build has its own random key, and tests look only at their own resources."""
    from pim.engine.deploy.aws.common import Clients
    from tests.deploy.ec2_rules import client_token_rule

    made = Clients.get

    def get(self: Clients, service: str, region: str) -> Any:
        new = (service, region) not in self._cache
        client = made(self, service, region)
        if new and service == "ec2":
            client_token_rule(client)
        return client

    monkeypatch.setattr(Clients, "get", get)
    return moto_url


def aws_target(url: str, **kw: Any) -> AwsTarget:
    return AwsTarget(type="aws", region="us-east-1", endpoint_url=url, **kw)


def boto(url: str, service: str, region: str = "us-east-1") -> Any:
    import boto3

    return boto3.client(service, region_name=region, endpoint_url=url)


# ---------------------------------------------------------------- Proxmox

@pytest.fixture(scope="session")
def pve_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    from fakepve.certs import make_cert

    certfile, keyfile, _ = make_cert(str(tmp_path_factory.mktemp("pve-tls")), hosts=("127.0.0.1",))
    return certfile, keyfile


@pytest.fixture
def pve(tmp_path: Path, pve_cert: tuple[str, str]) -> Iterator[Any]:
    from tests.deploy.pve_fake import FakePve

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    fake = FakePve(tmp_path / "pve").start(*pve_cert)
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def pve_env(monkeypatch: pytest.MonkeyPatch) -> str:
    from tests.deploy.pve_fake import TOKEN_SECRET

    monkeypatch.setenv("PIM_PROXMOX_TOKEN_SECRET", TOKEN_SECRET)
    return TOKEN_SECRET


def pve_target(fake: Any, ca_file: str, **kw: Any) -> ProxmoxTarget:
    from tests.deploy.pve_fake import TOKEN_ID

    args: dict[str, Any] = dict(type="proxmox", api_url=fake.url, node=fake.node, storage="local-lvm",
                                upload_storage="local", token_id=TOKEN_ID, ca_file=ca_file)
    args.update(kw)
    return ProxmoxTarget(**args)
