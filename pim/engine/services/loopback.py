"""A threaded HTTP server on 127.0.0.1 and a random port, run in the background.

PIM's servers (answer files, package cache) listen on loopback only: guests reach
them through user-mode networking as 10.0.2.2.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

GUEST_HOST = "10.0.2.2"  # the host's loopback as seen from a user-mode-networked guest


class LoopbackServer:
    """Routes GET and HEAD to handle(request, body: bool); no default access log."""

    def __init__(self, handle: Callable[[BaseHTTPRequestHandler, bool], None], name: str, http11: bool = False):
        self._handle = handle
        self._name = name
        self._http11 = http11
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self._httpd is not None, "the server is not running"
        return int(self._httpd.server_address[1])

    @property
    def address(self) -> str:
        assert self._httpd is not None, "the server is not running"
        return str(self._httpd.server_address[0])

    def start(self) -> None:
        handle = self._handle

        class Handler(BaseHTTPRequestHandler):
            server_version = "pim"
            sys_version = ""
            protocol_version = "HTTP/1.1" if self._http11 else "HTTP/1.0"

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                handle(self, True)

            def do_HEAD(self) -> None:  # noqa: N802
                handle(self, False)

            def log_message(self, format: str, *args: object) -> None:
                pass  # each server keeps its own log, without secrets

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        # shutdown() waits for serve_forever's next look at its flag: every 0.05 s, not the
        # default 0.5 s, so a stage ends when its guest does.
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=self._name,
                         daemon=True).start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
