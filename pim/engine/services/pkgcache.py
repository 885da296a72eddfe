"""A caching HTTP proxy for installers' package downloads, on 127.0.0.1.

Installers and apt send absolute-URI requests (`GET http://mirror/pool/... HTTP/1.1`).
Package files are immutable once published (their names carry the version), so they
are kept by URL and served from disk on every later request; index files (Release,
Packages, ...) change and are passed through untouched. The on-disk cache is shared
by every build; files appear in it only by atomic rename.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.parse
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from pim.engine.events import Emitter
from pim.engine.services.loopback import GUEST_HOST, LoopbackServer

IMMUTABLE_SUFFIXES = (".deb", ".udeb", ".ddeb", ".rpm", ".dsc", ".tar.gz", ".tar.xz", ".tar.bz2", ".diff.gz")
_HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "trailers",
                "transfer-encoding", "upgrade"}


def is_immutable(path: str) -> bool:
    path = path.split("?", 1)[0]
    return path.endswith(IMMUTABLE_SUFFIXES) and "/by-hash/" not in path


class PackageCache:
    def __init__(self, root: Path, events: Emitter | None = None, stage: str | None = None):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.events = events or Emitter()
        self.stage = stage
        self.hits = 0
        self.misses = 0
        self.passed = 0
        self.upstream_requests: list[str] = []
        self._server = LoopbackServer(self._handle, "pkgcache", http11=True)

    @property
    def port(self) -> int:
        return self._server.port

    def url(self, host: str = GUEST_HOST) -> str:
        return f"http://{host}:{self.port}/"

    def path_for(self, url: str) -> Path:
        return self.root / hashlib.sha256(url.encode()).hexdigest()

    def __enter__(self) -> "PackageCache":
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    # -- request handling ---------------------------------------------------
    def _handle(self, req: BaseHTTPRequestHandler, body: bool) -> None:
        url = req.path
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            req.send_error(400, "PIM's package cache is an HTTP proxy: send absolute http:// URLs")
            return
        cached = self.path_for(url)
        if is_immutable(parts.path) and cached.exists():
            self.hits += 1
            self._send_file(req, cached, body)
            self.events.log(self.stage, f"package cache: hit {parts.path.rsplit('/', 1)[-1]}", source="pkgcache")
            return
        try:
            self._fetch(req, url, parts, cached if is_immutable(parts.path) else None, body)
        except (OSError, http.client.HTTPException) as e:
            self.events.warning(self.stage, f"package cache: upstream {parts.hostname} failed: {e}")
            try:
                req.send_error(502, f"upstream failed: {e}")
            except OSError:
                pass

    def _send_file(self, req: BaseHTTPRequestHandler, path: Path, body: bool) -> None:
        req.send_response(200)
        req.send_header("Content-Type", "application/octet-stream")
        req.send_header("Content-Length", str(path.stat().st_size))
        req.end_headers()
        if body:
            with open(path, "rb") as f:
                shutil.copyfileobj(f, req.wfile, 1 << 20)

    def _fetch(self, req: BaseHTTPRequestHandler, url: str, parts: urllib.parse.SplitResult,
               keep: Path | None, body: bool) -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=60)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        headers = {k: v for k, v in req.headers.items() if k.lower() not in _HOP_HEADERS and k.lower() != "host"}
        if keep is not None:
            headers.pop("Range", None)  # fetch whole files we are going to keep
        self.upstream_requests.append(url)
        conn.request(req.command, target, headers=headers)
        resp = conn.getresponse()
        try:
            storing = keep is not None and body and resp.status == 200
            if storing:
                self.misses += 1
            else:
                self.passed += 1
            req.send_response(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in _HOP_HEADERS:
                    req.send_header(k, v)
            length = resp.getheader("Content-Length")
            if length is None:
                req.send_header("Connection", "close")
                req.close_connection = True
            req.end_headers()
            if not body:
                return
            tmp = None
            if storing:
                assert keep is not None
                fd, name = tempfile.mkstemp(dir=self.root, prefix=".part-")
                tmp = (os.fdopen(fd, "wb"), Path(name))
            try:
                # The last chunk reaches the client only after the file is published, so a
                # client that asks again once it has the whole body is served from the cache.
                held = b""
                while chunk := resp.read(1 << 16):
                    if tmp:
                        tmp[0].write(chunk)
                    if held:
                        req.wfile.write(held)
                    held = chunk
                if tmp:
                    tmp[0].close()
                    if length is None or tmp[1].stat().st_size == int(length):
                        os.replace(tmp[1], keep)  # type: ignore[arg-type]
                        self.events.log(self.stage, f"package cache: stored {parts.path.rsplit('/', 1)[-1]}",
                                        source="pkgcache")
                if held:
                    req.wfile.write(held)
            finally:
                if tmp:
                    tmp[0].close()
                    tmp[1].unlink(missing_ok=True)
        finally:
            resp.close()
            conn.close()
