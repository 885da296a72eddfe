"""Downloads that break on the way are retried and resumed; answers that say no fail at once.

The ISO download against http.server on 127.0.0.1 that answers 503, cuts its body or
says 404; the remote cache's blob download against moto's S3 server through a TCP
proxy that cuts the response part-way; DeleteObjects' per-key errors with botocore's
Stubber. Waits between tries are shortened (same number of tries) where a test makes
many of them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.client
import os
import re
import socket
import struct
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import pytest

from pim.engine import retry
from pim.engine.config.spec import Source
from pim.engine.errors import BuildError
from pim.engine.events import Emitter, Event
from pim.engine.remote import s3
from pim.engine.remote.s3 import Blob, Bucket, RemoteCacheError
from pim.engine.remote.spec import CacheSpec
from pim.engine.source import fetch
from pim.engine.source.fetch import resolve_iso
from tests.deploy import conftest as deploy_fixtures

moto_url = deploy_fixtures.moto_url  # the session's moto S3 server on 127.0.0.1 (a fixture)

MIB = 1 << 20


def quick(policy: retry.Policy) -> retry.Policy:
    """`policy` with the same tries and waits of a few milliseconds."""
    return dataclasses.replace(policy, first_wait=0.01, max_wait=0.02)


# ------------------------------------------------------------------ a proxy that cuts

class CutProxy:
    """A TCP proxy on 127.0.0.1 to 127.0.0.1:upstream that cuts connections.

    The first `times` connections whose answer (bytes from upstream) reaches `after`
    bytes are cut there; after=0 cuts them at once, before any byte. `how` is "reset"
    (RST, as a dropped network does) or "close" (FIN: a body that ends short). Records
    what each connection sent upstream and how many bytes came back.
    """

    def __init__(self, upstream: int, after: int, times: int = 1, how: str = "reset"):
        self.upstream, self.after, self.times, self.how = upstream, after, times, how
        self.cuts_made = 0
        self.sent: list[bytearray] = []  # per connection: the bytes the client sent
        self.received: list[int] = []  # per connection: the bytes that came back to the client
        self.lock = threading.Lock()
        self.cut: set[socket.socket] = set()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True, name="cut-proxy").start()

    @property
    def accepted(self) -> int:
        return len(self.sent)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                n = len(self.sent)
                self.sent.append(bytearray())
                self.received.append(0)
            if self.after == 0 and self._take():
                self._cut(client)
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream), timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            threading.Thread(target=self._up, args=(n, client, server), daemon=True).start()
            threading.Thread(target=self._down, args=(n, server, client), daemon=True).start()

    def _take(self) -> bool:
        with self.lock:
            if self.cuts_made >= self.times:
                return False
            self.cuts_made += 1
            return True

    def _cut(self, *socks: socket.socket) -> None:
        self.cut.update(socks)  # the other direction's thread leaves these alone (a shutdown would send FIN)
        for s in socks:
            with contextlib.suppress(OSError):
                if self.how == "reset":
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    s.shutdown(socket.SHUT_RD)  # wakes the other thread's recv; RST goes out at close
                else:
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def _up(self, n: int, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self.sent[n] += data
                dst.sendall(data)
        except OSError:
            pass
        self._end(src, dst)

    def _down(self, n: int, src: socket.socket, dst: socket.socket) -> None:
        cut = self.after
        try:
            while data := src.recv(65536):
                if 0 < cut <= self.received[n] + len(data) and self._take():
                    dst.sendall(data[:cut - self.received[n]])
                    self.received[n] = cut
                    _drain(dst)  # a reset drops what is still queued: the client gets all `after` bytes first
                    self._cut(dst, src)
                    return
                self.received[n] += len(data)
                dst.sendall(data)
        except OSError:
            pass
        self._end(src, dst)

    def _end(self, *socks: socket.socket) -> None:
        if any(s in self.cut for s in socks):
            return
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def requests(self) -> list[str]:
        """The HTTP request heads the clients sent, in order (for GETs: no bodies)."""
        heads = []
        for data in self.sent:
            heads += [h for h in bytes(data).decode("latin-1").split("\r\n\r\n") if h.strip()]
        return heads

    def close(self) -> None:
        self.sock.close()


def _drain(sock: socket.socket, timeout: float = 5.0) -> None:
    """Wait (up to `timeout` s) until the peer has acknowledged all sent to it (Linux: TIOCOUTQ)."""
    import fcntl
    import termios

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        if queued == 0:
            return
        time.sleep(0.005)


def range_of(head: str) -> str | None:
    m = re.search(r"(?im)^range:\s*(\S+)\s*$", head)
    return m[1] if m else None


# ------------------------------------------------------------------ ISO download (O1)

PAYLOAD = os.urandom(3 * MIB) + b"end"
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class ScriptedServer:
    """http.server on 127.0.0.1 that answers the n-th GET as `script[n]` says (then "serve"):
    "serve" (Range honoured), an HTTP status code such as 503 or 404, "cut" (a 200 or 206
    whose body stops at CUT bytes, FIN) or "reset" (the same with RST)."""

    CUT = 2 * MIB

    def __init__(self, script: list[str | int], payload: bytes = PAYLOAD):
        self.script, self.payload = list(script), payload
        self.ranges: list[str | None] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                rng = self.headers.get("Range")
                n = len(outer.ranges)
                outer.ranges.append(rng)
                step = outer.script[n] if n < len(outer.script) else "serve"
                if isinstance(step, int):
                    body = f"{step}\n".encode()
                    self.send_response(step)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                if start >= len(outer.payload):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(outer.payload)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = outer.payload[start:]
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(outer.payload) - 1}/{len(outer.payload)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if step == "serve":
                    self.wfile.write(body)
                    return
                self.wfile.write(body[:outer.CUT])
                self.wfile.flush()
                self.close_connection = True
                if step == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()

            def log_message(self, *a: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/installer.iso"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator:
    servers: list[ScriptedServer] = []

    def start(script: list[str | int]) -> ScriptedServer:
        servers.append(ScriptedServer(script))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def _logs(events: list[Event]) -> list[str]:
    return [e.message for e in events if e.kind == "log"]


def test_an_iso_download_survives_a_503_and_a_cut_body_and_resumes_with_range(tmp_path: Path, serve) -> None:
    server = serve([503, "cut", "serve"])
    seen: list[Event] = []
    path, digest = resolve_iso(Source(iso=server.url, sha256=SHA), tmp_path, tmp_path, Emitter(seen.append))
    assert digest == SHA and hashlib.sha256(path.read_bytes()).hexdigest() == SHA
    # the 503 is tried again from nothing; the cut body resumes where it stopped
    assert server.ranges == [None, None, f"bytes={ScriptedServer.CUT}-"]
    retries = [m for m in _logs(seen) if "try " in m]
    assert len(retries) == 2 and "HTTP 503" in retries[0] and "try 2 of 5" in retries[0], retries


def test_an_iso_body_reset_part_way_and_a_429_are_retried(tmp_path: Path, serve, monkeypatch) -> None:
    monkeypatch.setattr(fetch, "DOWNLOAD", quick(retry.DOWNLOAD))
    server = serve(["reset", 429, "serve"])
    path, digest = resolve_iso(Source(iso=server.url, sha256=SHA), tmp_path, tmp_path, Emitter())
    assert digest == SHA and hashlib.sha256(path.read_bytes()).hexdigest() == SHA
    assert len(server.ranges) == 3


@pytest.mark.parametrize("status", [404, 403, 410])
def test_an_iso_4xx_fails_at_once_after_one_request(tmp_path: Path, serve, status: int) -> None:
    server = serve([status])
    started = time.monotonic()
    with pytest.raises(BuildError, match=f"HTTP {status}"):
        resolve_iso(Source(iso=server.url, sha256=SHA), tmp_path, tmp_path, Emitter())
    assert len(server.ranges) == 1 and time.monotonic() - started < 5


def test_an_iso_server_that_keeps_failing_gives_up_after_the_download_policy(tmp_path: Path, serve,
                                                                              monkeypatch) -> None:
    monkeypatch.setattr(fetch, "DOWNLOAD", quick(retry.DOWNLOAD))
    server = serve([503] * 20)
    with pytest.raises(BuildError, match=r"HTTP 503.*gave up after 5 tries"):
        resolve_iso(Source(iso=server.url, sha256=SHA), tmp_path, tmp_path, Emitter())
    assert len(server.ranges) == retry.DOWNLOAD.attempts


def test_an_iso_body_that_keeps_breaking_is_a_build_error_and_keeps_the_part(tmp_path: Path, serve,
                                                                            monkeypatch) -> None:
    monkeypatch.setattr(fetch, "DOWNLOAD", quick(retry.DOWNLOAD))
    monkeypatch.setattr(ScriptedServer, "CUT", 100_000)
    big = os.urandom(8 * MIB)  # five tries of 100 kB each do not finish it
    server = ScriptedServer(["reset"] * 20, big)
    try:
        with pytest.raises(BuildError, match="gave up after 5 tries"):  # not a raw ConnectionResetError
            resolve_iso(Source(iso=server.url, sha256=hashlib.sha256(big).hexdigest()), tmp_path, tmp_path,
                        Emitter())
    finally:
        server.close()
    assert len(server.ranges) == retry.DOWNLOAD.attempts
    part = tmp_path / "isos" / f"{hashlib.sha256(big).hexdigest()}.iso.part"
    assert part.is_file() and big.startswith(part.read_bytes()), "the next run resumes from the .part"


def test_an_iso_416_on_a_complete_part_file_is_success(tmp_path: Path, serve) -> None:
    server = serve([])
    (tmp_path / "isos").mkdir()
    (tmp_path / "isos" / f"{SHA}.iso.part").write_bytes(PAYLOAD)
    path, digest = resolve_iso(Source(iso=server.url, sha256=SHA), tmp_path, tmp_path, Emitter())
    assert digest == SHA and server.ranges == [f"bytes={len(PAYLOAD)}-"]


# ------------------------------------------------------------------ remote cache blobs (R4, R6)

@pytest.fixture
def buckets(moto_url: str) -> Iterator[tuple[Bucket, int]]:
    """(a Bucket straight to moto, moto's port) with a fresh bucket."""
    import boto3

    name = f"pim-retry-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=moto_url).create_bucket(Bucket=name)
    yield Bucket(CacheSpec(remote=f"s3://{name}/c", endpoint_url=moto_url)), urlparse(moto_url).port


def _through(direct: Bucket, proxy: CutProxy) -> Bucket:
    return Bucket(CacheSpec(remote=direct.spec.remote, endpoint_url=f"http://127.0.0.1:{proxy.port}"))


def _put_blob(bucket: Bucket, data: bytes) -> Blob:
    digest = hashlib.sha256(data).hexdigest()
    bucket.client.put_object(Bucket=bucket.name, Key=bucket.blob_key(digest), Body=data)
    return Blob(sha256=digest, size=len(data))


@pytest.mark.parametrize("how", ["reset", "close"])
def test_a_blob_stream_cut_part_way_resumes_with_a_range_get(buckets, tmp_path: Path, how: str) -> None:
    direct, port = buckets
    data = os.urandom(3 * MIB + 12345)
    blob = _put_blob(direct, data)
    proxy = CutProxy(port, after=2 * MIB, how=how)  # the first answer to reach 2 MiB breaks there
    lines: list[str] = []
    try:
        counted: list[int] = []
        _through(direct, proxy).download(blob, tmp_path / "disk.qcow2", counted.append, log=lines.append)
    finally:
        proxy.close()
    assert (tmp_path / "disk.qcow2").read_bytes() == data
    gets = [h for h in proxy.requests() if h.startswith("GET ")]
    assert len(gets) == 2 and range_of(gets[0]) is None, gets
    resumed_at = int(re.fullmatch(r"bytes=(\d+)-", range_of(gets[1]) or "")[1])
    assert 0 < resumed_at < len(data) and sum(counted) == len(data)
    assert len(lines) == 1 and "try 2 of 5" in lines[0], lines


def test_a_blob_stream_that_keeps_breaking_is_a_remote_cache_error_after_the_download_policy(
        buckets, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(s3, "DOWNLOAD", quick(retry.DOWNLOAD))
    direct, port = buckets
    blob = _put_blob(direct, os.urandom(2 * MIB))
    proxy = CutProxy(port, after=1000, times=99)  # every answer breaks inside its first chunk
    try:
        with pytest.raises(RemoteCacheError, match=r"downloading disk.qcow2 failed at byte 0 .*gave up after 5 tries"):
            _through(direct, proxy).download(blob, tmp_path / "disk.qcow2", lambda n: None)
    finally:
        proxy.close()
    assert len([h for h in proxy.requests() if h.startswith("GET ")]) == retry.DOWNLOAD.attempts
    assert not (tmp_path / "disk.qcow2").exists()


def test_a_pull_whose_blob_breaks_once_keeps_the_remote_for_the_build(buckets, tmp_path: Path) -> None:
    from pim.engine.pipeline.finder import Finder
    from pim.engine.store.objects import Store
    from tests.test_remote_pull import KEY, put_object

    direct, port = buckets
    data = os.urandom(3 * MIB)
    put_object(direct, {"blob.bin": data})
    proxy = CutProxy(port, after=2 * MIB)
    seen: list[Event] = []
    store = Store(tmp_path / "store")
    try:
        finder = Finder(store, _through(direct, proxy), Emitter(seen.append))
        with contextlib.ExitStack() as held:
            got = finder.usable(KEY, held)
    finally:
        proxy.close()
    assert got is not None and finder.remote is not None, [e.message for e in seen]
    assert [e.message for e in seen if e.kind == "warning"] == []
    assert (store.object(KEY) / "blob.bin").read_bytes() == data
    assert proxy.cuts_made == 1 and any("try 2 of 5" in m for m in _logs(seen)), _logs(seen)


@pytest.mark.parametrize("error", [
    lambda: __import__("botocore.exceptions").exceptions.ReadTimeoutError(endpoint_url="http://x", error="timed out"),
    lambda: __import__("botocore.exceptions").exceptions.ResponseStreamingError(error="Connection broken"),
    lambda: __import__("botocore.exceptions").exceptions.IncompleteReadError(actual_bytes=1, expected_bytes=2),
    lambda: ConnectionResetError(104, "Connection reset by peer"),
    lambda: http.client.IncompleteRead(b"x", 10),
], ids=["ReadTimeoutError", "ResponseStreamingError", "IncompleteReadError", "ConnectionResetError",
        "IncompleteRead"])
def test_each_kind_of_broken_body_counts_as_a_stream_to_resume(error) -> None:
    class Body:
        def read(self, n: int) -> bytes:
            raise error()

    with pytest.raises(s3._StreamBroke):
        s3._read(Body())


# ------------------------------------------------------------------ DeleteObjects (R7)

@pytest.fixture
def stubbed(monkeypatch) -> Iterator[tuple[Bucket, object]]:
    from botocore.stub import Stubber

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setattr(s3, "S3_DELETE", quick(retry.S3_DELETE))
    bucket = Bucket(CacheSpec(remote="s3://pim-stub/c", region="us-east-1"))
    with Stubber(bucket.client) as stub:
        yield bucket, stub
        stub.assert_no_pending_responses()


def _deletes(keys: list[str]) -> dict:
    return {"Bucket": "pim-stub", "Delete": {"Objects": [{"Key": k} for k in keys], "Quiet": True}}


def test_delete_objects_per_key_errors_fail_naming_the_keys(stubbed) -> None:
    bucket, stub = stubbed
    stub.add_response("delete_objects", {"Errors": [
        {"Key": "c/blobs/sha256/aa", "Code": "AccessDenied", "Message": "Access Denied"},
        {"Key": "c/blobs/sha256/bb", "Code": "SlowDown", "Message": "Please reduce your request rate."}]},
        _deletes(["c/blobs/sha256/aa", "c/blobs/sha256/bb", "c/blobs/sha256/cc"]))
    with pytest.raises(RemoteCacheError, match=r"2 key\(s\) were not deleted: c/blobs/sha256/aa \(AccessDenied"
                                               r".*c/blobs/sha256/bb \(SlowDown"):
        bucket.delete(["c/blobs/sha256/aa", "c/blobs/sha256/bb", "c/blobs/sha256/cc"])  # one call: no retry


def test_delete_objects_slowdown_keys_alone_are_sent_again(stubbed) -> None:
    bucket, stub = stubbed
    stub.add_response("delete_objects", {"Errors": [
        {"Key": "c/b", "Code": "SlowDown", "Message": "Please reduce your request rate."},
        {"Key": "c/c", "Code": "NoSuchKey", "Message": "gone already"}]}, _deletes(["c/a", "c/b", "c/c"]))
    stub.add_response("delete_objects", {"Errors": [{"Key": "c/b", "Code": "InternalError", "Message": "x"}]},
                      _deletes(["c/b"]))
    stub.add_response("delete_objects", {}, _deletes(["c/b"]))
    bucket.delete(["c/a", "c/b", "c/c"])


def test_delete_objects_that_keep_slowing_down_give_up_after_the_policy(stubbed) -> None:
    bucket, stub = stubbed
    for _ in range(retry.S3_DELETE.attempts):
        stub.add_response("delete_objects", {"Errors": [{"Key": "c/a", "Code": "SlowDown", "Message": "slow"}]},
                          _deletes(["c/a"]))
    with pytest.raises(RemoteCacheError, match=r"c/a \(SlowDown: slow\).*gave up after 5 tries"):
        bucket.delete(["c/a"])


# ------------------------------------------------------------------ every cache request (R0-R3, R6)

def test_a_cache_request_reset_before_its_answer_is_retried_by_botocore(buckets) -> None:
    direct, port = buckets
    direct.put_json(direct.ref_key("web"), {"key": "ab" * 32})
    proxy = CutProxy(port, after=0, times=2)  # the first two connections are reset at once
    try:
        assert _through(direct, proxy).get_json(direct.ref_key("web")) == {"key": "ab" * 32}
    finally:
        proxy.close()
    assert proxy.accepted == 3


def test_a_cache_request_that_keeps_failing_gives_up_after_six_attempts(buckets) -> None:
    direct, port = buckets
    proxy = CutProxy(port, after=0, times=99)
    try:
        with pytest.raises(RemoteCacheError, match="reading .*refs/web.json failed"):
            _through(direct, proxy).get_json(direct.ref_key("web"))
    finally:
        proxy.close()
    assert proxy.accepted == 6  # botocore standard mode: max_attempts 5 is 6 attempts in all


def test_a_conditional_put_that_loses_the_race_is_false_not_an_error(buckets) -> None:
    direct, _ = buckets
    key = direct.manifest_key("cd" * 32)
    assert direct.put_json(key, {"first": True}, only_new=True) is True
    assert direct.put_json(key, {"first": False}, only_new=True) is False
    assert direct.get_json(key) == {"first": True}


def test_head_object_404_is_absent_and_403_is_a_remote_cache_error(stubbed) -> None:
    bucket, stub = stubbed
    stub.add_client_error("head_object", "404", "Not Found", 404, expected_params={"Bucket": "pim-stub", "Key": "c/a"})
    stub.add_client_error("head_object", "403", "Forbidden", 403, expected_params={"Bucket": "pim-stub", "Key": "c/a"})
    assert bucket.exists("c/a") is False
    with pytest.raises(RemoteCacheError, match="looking up c/a failed"):
        bucket.exists("c/a")


def test_a_remote_that_fails_is_dropped_for_the_rest_of_the_build_with_a_warning(buckets, tmp_path: Path) -> None:
    from pim.engine.pipeline.finder import Finder
    from pim.engine.store.objects import Store

    direct, port = buckets
    proxy = CutProxy(port, after=0, times=99)
    seen: list[Event] = []
    try:
        finder = Finder(Store(tmp_path / "store"), _through(direct, proxy), Emitter(seen.append))
        with contextlib.ExitStack() as held:
            assert finder.usable("ab" * 32, held) is None
            assert finder.usable("cd" * 32, held) is None  # no second lookup: the remote is gone
    finally:
        proxy.close()
    assert finder.remote is None and proxy.accepted == 6
    assert [e.message for e in seen if e.kind == "warning"][0].endswith("going on without the remote cache")
