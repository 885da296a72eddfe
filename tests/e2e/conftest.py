"""Shared set-up for end-to-end tests: the fixture installer ISO (cached on the
machine between runs) and one PIM cache per run, so tests share built stages."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest
import yaml

from tests.helpers import apt_package_uris

if TYPE_CHECKING:
    from tests import sshd

FIXTURE_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "installer"
FIXTURE_CACHE = Path(os.environ.get("PIM_TEST_FIXTURES", Path.home() / ".cache" / "pim-test-fixtures"))

ANSWER = "hostname={{ hostname }}\nssh_authorized_key={{ ssh_public_key }}\n{{ extra | default('') }}\n"


def _fixture_builder():
    spec = importlib.util.spec_from_file_location("pim_fixture_build", FIXTURE_DIR / "build.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def fixture_iso() -> Path:
    if not shutil.which("qemu-system-x86_64") or not shutil.which("mmdebstrap"):
        pytest.fail("QEMU or mmdebstrap is missing: run the suite with `make test`, which installs them")
    return _fixture_builder().build_fixture_iso(FIXTURE_CACHE)


@pytest.fixture(scope="session")
def fixture_iso_aarch64() -> Path:
    """The arm64 fixture installer (debootstrap's first stage on this host, no binfmt)."""
    if not shutil.which("qemu-system-aarch64") or not shutil.which("debootstrap"):
        pytest.fail("qemu-system-aarch64 or debootstrap is missing: run the suite with `make test` or "
                    "`make acceptance`, which install them")
    return _fixture_builder().build_fixture_iso(FIXTURE_CACHE, "aarch64")


@pytest.fixture(scope="session")
def pim_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pim-cache")


@pytest.fixture(scope="session")
def runtime_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("xdg-runtime")


def _set_pim_env(patch: pytest.MonkeyPatch, pim_cache: Path, runtime_root: Path) -> None:
    patch.setenv("PIM_CACHE_DIR", str(pim_cache))
    patch.setenv("XDG_RUNTIME_DIR", str(runtime_root))


@pytest.fixture(autouse=True)
def _pim_env(pim_cache: Path, runtime_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _set_pim_env(monkeypatch, pim_cache, runtime_root)


@pytest.fixture(scope="module")
def module_pim_env(pim_cache: Path, runtime_root: Path) -> Iterator[None]:
    """The same environment for a module-scoped fixture that builds once for its tests;
    undone after the module."""
    with pytest.MonkeyPatch.context() as patch:
        _set_pim_env(patch, pim_cache, runtime_root)
        yield


DIRECT_BOOT = {"kernel": "/install.amd/vmlinuz", "initrd": "/install.amd/initrd.gz",
               "params": "console=ttyS0,115200 url={{ answer_url }}"}
DIRECT_BOOT_AARCH64 = {"kernel": "/install.a64/vmlinuz", "initrd": "/install.a64/initrd.gz",
                       "params": "console=ttyAMA0 url={{ answer_url }}"}


def apt_package_url(package: str = "hello") -> tuple[str, str]:
    """(url, sha256) of a real package file from the mirror the host's apt uses; skips
    the test, with the reason, when that mirror is unreachable."""
    return apt_package_uris(package, update=True)[0]


def make_config(folder: Path, iso: Path, *, provision: list | None = None, vars: dict | None = None,
                name: str = "e2e", boot: dict | None = None, installer_timeout: str = "10m",
                **image_overrides: object) -> Path:
    """A pim.yaml building `name` from the fixture ISO."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "answer.txt").write_text(ANSWER)
    link = folder / "installer.iso"
    if not link.exists():
        link.symlink_to(iso)
    image = {
        "source": {"iso": "installer.iso"},
        "disk_size": "4G",
        "memory": "1G",
        "installer": {
            "template": "answer.txt",
            "vars": vars or {},
            "boot": boot or DIRECT_BOOT,
            "timeout": installer_timeout,
        },
        "ssh": {"timeout": "5m"},
        "provision": provision or [],
        **image_overrides,
    }
    cfg = folder / "pim.yaml"
    cfg.write_text(yaml.safe_dump({"images": {name: image}}, sort_keys=False))
    return cfg


@pytest.fixture(scope="session")
def builder_host() -> Iterator["sshd.BuilderHost"]:
    """A remote builder: a real sshd on 127.0.0.1 (tests/sshd.py), started once per run."""
    from tests import sshd

    host = sshd.start()
    try:
        yield host
    finally:
        host.stop()


def remote_config(folder: Path, iso: Path, host: "sshd.BuilderHost", builders: dict | None = None,
                  images: dict | None = None, **kw: object) -> Path:
    """make_config's pim.yaml with `builders:` (default: {remote: host}); `images` turns the
    one image into several, each `{name: overrides}`."""
    cfg = make_config(folder, iso, **kw)
    data = yaml.safe_load(cfg.read_text())
    data["builders"] = builders if builders is not None else {"remote": host.builder()}
    if images:
        base = data["images"].pop("e2e")
        data["images"] = {name: {**base, **extra} for name, extra in images.items()}
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    return cfg
