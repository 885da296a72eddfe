"""scripts/demo-installer's probe against a mirror on loopback (fast: part of make test)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import lzma
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "demo-installer"
INDEX = "dists/bookworm/main/debian-installer/binary-amd64/Packages.xz"
PACKAGES = """Package: apt-mirror-setup
Version: 0.182
Filename: pool/main/a/apt-setup/apt-mirror-setup_0.182_all.udeb

Package: base-installer
Description: base system installation
 Filename: not/this/one.udeb
Filename: pool/main/b/base-installer/base-installer_1.213_all.udeb

Package: anna
Filename: pool/main/a/anna/anna_1.87_amd64.udeb
"""


def _demo():
    loader = importlib.machinery.SourceFileLoader("demo_installer", str(SCRIPT))
    spec = importlib.util.spec_from_loader("demo_installer", loader)
    assert spec
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.fixture
def mirror() -> Iterator[tuple[str, dict[str, bytes], list[str]]]:
    """(base URL, served files by path, requests seen as "METHOD path")."""
    files: dict[str, bytes] = {}
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def _serve(self, body: bool) -> None:
            seen.append(f"{self.command} {self.path}")
            data = files.get(self.path.removeprefix("/debian/"))
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            self._serve(True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._serve(False)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/debian", files, seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_probe_asks_three_things_and_names_the_missing_udeb(mirror) -> None:  # type: ignore[no-untyped-def]
    url, files, seen = mirror
    demo = _demo()
    assert demo.probe(url) == "the host's Debian mirror has no readable installer index (HTTP 404)"
    files[INDEX] = lzma.compress(PACKAGES.encode())
    files["pool/main/b/base-installer/base-installer_1.213_all.udeb"] = b"udeb"
    seen.clear()
    assert demo.probe(url) == "the host's Debian mirror does not serve apt-mirror-setup_0.182_all.udeb (HTTP 404)"
    files["pool/main/a/apt-setup/apt-mirror-setup_0.182_all.udeb"] = b"udeb"
    seen.clear()
    assert demo.probe(url) is None
    assert seen == [f"GET /debian/{INDEX}", "HEAD /debian/pool/main/a/apt-setup/apt-mirror-setup_0.182_all.udeb",
                    "HEAD /debian/pool/main/b/base-installer/base-installer_1.213_all.udeb"]


def test_an_index_without_the_probed_udebs_is_a_reason_too(mirror) -> None:  # type: ignore[no-untyped-def]
    url, files, _seen = mirror
    files[INDEX] = lzma.compress(b"Package: anna\nFilename: pool/main/a/anna/anna_1.87_amd64.udeb\n")
    assert _demo().probe(url) == "the installer index lacks apt-mirror-setup, base-installer"
