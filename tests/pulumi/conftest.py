"""Fast Pulumi tests (no QEMU): builds are seeded into a temporary PIM cache, deploys go
to the deploy tests' moto server and Proxmox fake on 127.0.0.1 (their fixtures, reused)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from pim.engine.config.spec import load_config
from tests.deploy.conftest import BLOCK, aws, make_disk, moto_url, pve, pve_cert, pve_env  # noqa: F401  (fixtures)
from tests.deploy.conftest import standard_writes
from tests.helpers import MINIMAL_FILES, minimal_image, write_config
from tests.pulumi.grpc_client import DynamicServer, provider_env
from tests.pulumi.seed import seed_build

IMAGE_TYPE = "pulumi-python:dynamic/pim:Image"
DEPLOYMENT_TYPE = "pulumi-python:dynamic/pim:Deployment"
VIRTUAL = 32 * BLOCK


@dataclass
class Project:
    folder: Path
    config: Path
    cache: Path
    key: str  # the seeded build's content key

    def image_inputs(self, **overrides: Any) -> dict[str, Any]:
        """An Image's inputs as the program sends them (pim.Image's props, outputs left out)."""
        props: dict[str, Any] = {"config": str(self.config), "image": "web", "tags": {}, "delete_artifact": False}
        props.update(overrides)
        return props


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "pim-cache"
    monkeypatch.setenv("PIM_CACHE_DIR", str(path))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    return path


@pytest.fixture
def project(tmp_path: Path, cache: Path) -> Project:
    """pim.yaml with image `web` (a shell step running scripts/setup.sh) and its build in the cache."""
    image = minimal_image(provision=[{"type": "shell", "script": "scripts/setup.sh"}])
    files = {**MINIMAL_FILES, "scripts/setup.sh": "echo setting up\n"}
    config = write_config(tmp_path / "proj", {"web": image}, files)
    disk = make_disk(tmp_path / "disk", "web", VIRTUAL, standard_writes())
    key = seed_build(load_config(config), "web", cache, disk.image.path, VIRTUAL)
    return Project(config.parent, config, cache, key)


@pytest.fixture
def image_server(cache: Path) -> Iterator[DynamicServer]:
    server = DynamicServer(provider_env(), IMAGE_TYPE).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def deployment_server(cache: Path, aws: str, pve_env: str) -> Iterator[DynamicServer]:
    """Started after the moto server and the PVE token's variable: the engine starts a
    provider with its own environment, which is where AWS credentials come from."""
    server = DynamicServer(provider_env(), DEPLOYMENT_TYPE).start()
    try:
        yield server
    finally:
        server.stop()
