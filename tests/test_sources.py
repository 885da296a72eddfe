import hashlib
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pim.engine.errors import ChecksumMismatch
from pim.engine.events import Emitter
from pim.engine.source.fetch import resolve_iso, sha256_file
from pim.engine.config.spec import Source

PAYLOAD = os.urandom(3 << 20) + b"end"


class RangeServer:
    """A loopback HTTP server with Range support that records the requests it got."""

    def __init__(self, payload: bytes):
        self.payload = payload
        self.ranges: list[str | None] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                rng = self.headers.get("Range")
                outer.ranges.append(rng)
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                body = outer.payload[start:]
                self.send_response(206 if rng else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/debian.iso"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = RangeServer(PAYLOAD)
    yield s
    s.close()


def test_download_verify_and_cache(tmp_path: Path, server: RangeServer) -> None:
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    progress: list = []
    path, digest = resolve_iso(Source(iso=server.url, sha256=sha), tmp_path, tmp_path, Emitter(progress.append))
    assert digest == sha and path.read_bytes() == PAYLOAD
    assert path == tmp_path / "isos" / f"{sha}.iso"
    assert any(e.kind == "progress" for e in progress)
    resolve_iso(Source(iso=server.url, sha256=sha), tmp_path, tmp_path, Emitter())
    assert len(server.ranges) == 1  # the second resolve used the cache


def test_download_resumes_from_partial_file(tmp_path: Path, server: RangeServer) -> None:
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    (tmp_path / "isos").mkdir()
    (tmp_path / "isos" / f"{sha}.iso.part").write_bytes(PAYLOAD[:1000])
    path, _ = resolve_iso(Source(iso=server.url, sha256=sha), tmp_path, tmp_path, Emitter())
    assert server.ranges == ["bytes=1000-"]
    assert path.read_bytes() == PAYLOAD


def test_mismatch_names_both_hashes_and_keeps_nothing(tmp_path: Path, server: RangeServer) -> None:
    wrong = "0" * 64
    actual = hashlib.sha256(PAYLOAD).hexdigest()
    with pytest.raises(ChecksumMismatch) as e:
        resolve_iso(Source(iso=server.url, sha256=wrong), tmp_path, tmp_path, Emitter())
    assert wrong in str(e.value) and actual in str(e.value)
    assert e.value.exit_code == 2
    assert list((tmp_path / "isos").iterdir()) == []


def test_local_iso_checked_and_hash_memoized(tmp_path: Path) -> None:
    iso = tmp_path / "local.iso"
    iso.write_bytes(b"local iso")
    sha = hashlib.sha256(b"local iso").hexdigest()
    ctx = {"base_dir": tmp_path}
    good = Source.model_validate({"iso": "local.iso", "sha256": sha}, context=ctx)
    assert resolve_iso(good, tmp_path, tmp_path, Emitter()) == (iso.resolve(), sha)
    bad = Source.model_validate({"iso": "local.iso", "sha256": "f" * 64}, context=ctx)
    with pytest.raises(ChecksumMismatch):
        resolve_iso(bad, tmp_path, tmp_path, Emitter())
    # memoized by identity: same size and mtime -> the remembered digest is used
    st = iso.stat()
    iso.write_bytes(b"LOCAL ISO")
    os.utime(iso, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert sha256_file(iso, tmp_path) == sha
    # a new mtime is a new identity -> hashed again
    os.utime(iso, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert sha256_file(iso, tmp_path) == hashlib.sha256(b"LOCAL ISO").hexdigest()
