"""The answer-file HTTP server: serves the installer its files, and nothing else.

Bound to 127.0.0.1 on a random port (the guest reaches it as 10.0.2.2 through
user-mode networking), under a random per-build path prefix; everything else is
404. The access log names files, never the prefix or any content.
"""

from __future__ import annotations

import secrets
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from pim.engine.events import Emitter
from pim.engine.services.loopback import GUEST_HOST, LoopbackServer


class AnswerServer:
    """Serves files (name -> bytes, or a Path read per request) under /<token>/name.

    events: its access log, one log event per request (method, file name or
    "unknown path", status, size); the token joins events' secrets, so the answer
    URL is masked wherever the build shows it. Use as a context manager: the server
    runs between enter and exit.
    """

    def __init__(self, files: dict[str, bytes | Path], events: Emitter, stage: str = "install"):
        self._files = dict(files)
        self.events = events
        self.stage = stage
        self.token = secrets.token_urlsafe(16)
        events.add_secret(self.token)  # the answer URL reaches the console, boot parameters and logs
        self.fetched: list[str] = []
        self._server = LoopbackServer(self._serve, "answer-server")

    @property
    def port(self) -> int:
        return self._server.port

    def url(self, name: str = "", host: str = GUEST_HOST) -> str:
        return f"http://{host}:{self.port}/{self.token}/{name}"

    def add(self, name: str, content: bytes | Path) -> None:
        self._files[name] = content

    def __enter__(self) -> "AnswerServer":
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    def _serve(self, req: BaseHTTPRequestHandler, body: bool) -> None:
        name = self._lookup(req.path)
        if name is None:
            req.send_error(404)
            self.events.log(self.stage, f"answer server: {req.command} (unknown path) 404", source="http")
            return
        item = self._files[name]
        data = item.read_bytes() if isinstance(item, Path) else item
        req.send_response(200)
        req.send_header("Content-Type", "application/octet-stream")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        if body:
            req.wfile.write(data)
            self.fetched.append(name)
        self.events.log(self.stage, f"answer server: {req.command} {name} 200 ({len(data)} bytes)", source="http")

    def _lookup(self, path: str) -> str | None:
        path = path.split("?", 1)[0]
        prefix = f"/{self.token}/"
        if not path.startswith(prefix):
            return None
        name = path[len(prefix):]
        return name if name in self._files else None
