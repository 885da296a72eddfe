"""The package cache against real package files from the mirror the host's apt uses."""

from __future__ import annotations

import hashlib
import urllib.request
from pathlib import Path

import pytest

from pim.engine.services.pkgcache import PackageCache, is_immutable
from tests.helpers import apt_package_uris


def _get(proxy: str, url: str) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy}))
    with opener.open(url, timeout=60) as r:
        return r.read()


def test_classification() -> None:
    assert is_immutable("/debian/pool/main/h/hello/hello_2.10-3_amd64.deb")
    assert is_immutable("/debian/pool/main/d/debian-installer/foo_1.0_all.udeb")
    assert not is_immutable("/debian/dists/bookworm/InRelease")
    assert not is_immutable("/debian/dists/bookworm/main/binary-amd64/Packages.xz")


def test_second_fetch_is_served_from_cache_byte_identical(tmp_path: Path) -> None:
    (url, sha), = apt_package_uris("hello")
    with PackageCache(tmp_path / "pkgs") as cache:
        proxy = f"http://127.0.0.1:{cache.port}"
        first = _get(proxy, url)
        assert hashlib.sha256(first).hexdigest() == sha
        assert (cache.misses, cache.hits, len(cache.upstream_requests)) == (1, 0, 1)
        second = _get(proxy, url)
        assert second == first
        assert (cache.misses, cache.hits, len(cache.upstream_requests)) == (1, 1, 1)
    # shared across builds: a new proxy over the same folder hits at once
    with PackageCache(tmp_path / "pkgs") as again:
        assert _get(f"http://127.0.0.1:{again.port}", url) == first
        assert again.upstream_requests == []


def test_index_files_pass_through_uncached(tmp_path: Path) -> None:
    (url, _), = apt_package_uris("hello")
    codename = next(line.split("=", 1)[1].strip() for line in Path("/etc/os-release").read_text().splitlines()
                    if line.startswith("VERSION_CODENAME="))
    release = url.split("/pool/", 1)[0] + f"/dists/{codename}/Release"
    with PackageCache(tmp_path / "pkgs") as cache:
        proxy = f"http://127.0.0.1:{cache.port}"
        assert b"Codename: " + codename.encode() in _get(proxy, release)
        _get(proxy, release)
        assert len(cache.upstream_requests) == 2 and cache.hits == 0
    assert [p for p in (tmp_path / "pkgs").iterdir()] == []


def test_rejects_non_proxy_requests(tmp_path: Path) -> None:
    import urllib.error

    with PackageCache(tmp_path / "pkgs") as cache:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{cache.port}/pool/x.deb", timeout=5)
        assert e.value.code == 400


def test_an_upstream_that_cannot_be_reached_is_a_502_once_and_nothing_is_stored(tmp_path: Path) -> None:
    """Not retried by the proxy: the guest's own client (apt, d-i, dnf) retries, as it would
    against the mirror itself. A closed port on loopback stands for an unreachable mirror."""
    import socket
    import urllib.error

    with socket.socket() as s:  # a port that is free now and refuses connections
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/debian/pool/main/h/hello/hello_2.10-3_amd64.deb"
    with PackageCache(tmp_path / "pkgs") as cache:
        with pytest.raises(urllib.error.HTTPError) as info:
            _get(f"http://127.0.0.1:{cache.port}", url)
        assert info.value.code == 502 and "upstream failed" in str(info.value.reason)
        assert len(cache.upstream_requests) == 1 and cache.hits == 0
    assert [p for p in (tmp_path / "pkgs").rglob("*") if p.is_file()] == []
