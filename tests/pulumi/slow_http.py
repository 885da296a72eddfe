"""An HTTP server on 127.0.0.1 that sends a large file very slowly: a download that
takes far longer than a test may wait, to exercise deadlines and progress."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Trickle(BaseHTTPRequestHandler):
    size = 64 << 20
    chunk, pause, limit = 16 << 10, 0.1, 120.0  # ~160 KiB/s, never longer than `limit` seconds

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(self.size))
        self.end_headers()
        sent, t0 = 0, time.monotonic()
        try:
            while sent < self.size and time.monotonic() - t0 < self.limit:
                self.wfile.write(b"\0" * self.chunk)
                self.wfile.flush()
                sent += self.chunk
                time.sleep(self.pause)
        except OSError:
            pass  # the client went away

    def log_message(self, *args: object) -> None:
        pass


class SlowServer:
    def __enter__(self) -> "SlowServer":
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/installer.iso"
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
