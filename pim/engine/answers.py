"""The answer-file HTTP server: serves the installer its files, and nothing else.

Bound to 127.0.0.1 on a random port (the guest reaches it as 10.0.2.2 through
user-mode networking), under a random per-build path prefix; everything else is
404. The access log names files, never the prefix or any content.
"""

from __future__ import annotations

import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from pim.engine.events import Emitter

GUEST_HOST = "10.0.2.2"  # the host's loopback as seen from a user-mode-networked guest


class AnswerServer:
    def __init__(self, files: dict[str, bytes | Path], events: Emitter, stage: str = "install"):
        self._files = dict(files)
        self.events = events
        self.stage = stage
        self.token = secrets.token_urlsafe(16)
        self.fetched: list[str] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return int(self._httpd.server_address[1])

    def url(self, name: str = "", host: str = GUEST_HOST) -> str:
        return f"http://{host}:{self.port}/{self.token}/{name}"

    def add(self, name: str, content: bytes | Path) -> None:
        self._files[name] = content

    def __enter__(self) -> "AnswerServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "pim"
            sys_version = ""

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                self._serve(body=True)

            def do_HEAD(self) -> None:  # noqa: N802
                self._serve(body=False)

            def _serve(self, body: bool) -> None:
                name = server._lookup(self.path)
                if name is None:
                    self.send_error(404)
                    server.events.log(server.stage, f"answer server: {self.command} (unknown path) 404", source="http")
                    return
                item = server._files[name]
                data = item.read_bytes() if isinstance(item, Path) else item
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)
                    server.fetched.append(name)
                server.events.log(
                    server.stage, f"answer server: {self.command} {name} 200 ({len(data)} bytes)", source="http"
                )

            def log_message(self, format: str, *args: object) -> None:
                pass  # our own access log above never includes the path prefix

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="answer-server", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def _lookup(self, path: str) -> str | None:
        path = path.split("?", 1)[0]
        prefix = f"/{self.token}/"
        if not path.startswith(prefix):
            return None
        name = path[len(prefix):]
        return name if name in self._files else None
