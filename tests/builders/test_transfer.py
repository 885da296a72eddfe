"""File transfer to and from a builder over a real SSH connection (sshd on 127.0.0.1):
a download continues where an interrupted one stopped, a download whose bytes do not
hash to what the builder reported is discarded, an upload writes its own file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator

import pytest

from pim.engine.builders.spec import BuilderSpec, resolve
from pim.engine.builders.ssh import Connection
from pim.engine.errors import BuildError
from tests import sshd


@pytest.fixture(scope="module")
def conn() -> Iterator[tuple[Connection, sshd.BuilderHost]]:
    host = sshd.start()
    try:
        with Connection(resolve("t", BuilderSpec(**host.builder()), {})) as c:
            yield c, host
    finally:
        host.stop()


def _blob(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def test_a_download_continues_a_partial_file(conn: tuple, tmp_path: Path) -> None:
    c, host = conn
    remote = host.home / "artifact.bin"
    sha = _blob(remote, 5 << 20)
    local = tmp_path / "artifact.bin.part"
    local.write_bytes(remote.read_bytes()[: 2 << 20])  # what an interrupted download left
    seen: list[int] = []
    c.get(str(remote), local, sha, 5 << 20, seen.append)
    assert local.read_bytes() == remote.read_bytes()
    assert seen[0] == 2 << 20 and sum(seen) == 5 << 20, "the first 2 MiB were not fetched again"


def test_a_download_that_does_not_match_is_discarded(conn: tuple, tmp_path: Path) -> None:
    c, host = conn
    remote = host.home / "other.bin"
    sha = _blob(remote, 1 << 20)
    local = tmp_path / "other.bin.part"
    local.write_bytes(b"x" * 1000)  # a partial file from something else
    with pytest.raises(BuildError, match="came back damaged"):
        c.get(str(remote), local, sha, 1 << 20)
    assert not local.exists()
    c.get(str(remote), local, sha, 1 << 20)  # the next try starts over and succeeds
    assert hashlib.sha256(local.read_bytes()).hexdigest() == sha


def test_a_missing_remote_file_is_a_build_error(conn: tuple, tmp_path: Path) -> None:
    c, host = conn
    with pytest.raises(BuildError, match="reading .* failed there"):
        c.get(str(host.home / "nope"), tmp_path / "nope", "0" * 64, 10)


def test_an_upload_writes_its_file_whole(conn: tuple, tmp_path: Path) -> None:
    c, host = conn
    local = tmp_path / "input.iso"
    _blob(local, 3 << 20)
    remote = host.home / "incoming.part"
    remote.write_bytes(b"left over from something else" * 1000)
    seen: list[int] = []
    c.put(local, str(remote), seen.append)
    assert remote.read_bytes() == local.read_bytes() and sum(seen) == 3 << 20
