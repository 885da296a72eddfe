"""Proxies on 127.0.0.1 that inject network faults: a TCP proxy that cuts connections in the
middle of a request body (DropProxy), and an HTTPS proxy that answers chosen requests with an
error status or a reset of its own (FaultProxy)."""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
import struct
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class DropProxy:
    """Forwards to 127.0.0.1:upstream; a connection that sends more than `after` bytes is reset
    (RST, as a dropped network would) while `drops` lasts. `cuts` overrides that per connection,
    in the order they come: connection i is reset once it has sent more than cuts[i] bytes (0:
    at its first bytes, so connecting fails); connections past the list follow after/drops.
    `accepted` counts connections."""

    def __init__(self, upstream: int, after: int, drops: int, cuts: list[int] | None = None):
        self.upstream, self.after, self.drops, self.dropped = upstream, after, drops, 0
        self.cuts, self.accepted = list(cuts or []), 0
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True, name="drop-proxy").start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                cut = self.cuts[self.accepted] if self.accepted < len(self.cuts) else None
                self.accepted += 1
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream), timeout=10)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, server, True, cut), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool, cut: int | None = None) -> None:
        sent = 0
        try:
            while data := src.recv(65536):
                sent += len(data)
                if upstream and (sent > cut and self._count_drop() if cut is not None
                                 else sent > self.after and self._take_drop()):
                    for s in (src, dst):
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        s.close()
                    return
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _take_drop(self) -> bool:
        with self.lock:
            if self.drops <= 0:
                return False
            self.drops -= 1
            self.dropped += 1
            return True

    def _count_drop(self) -> bool:
        with self.lock:
            self.dropped += 1
        return True

    def stop(self) -> None:
        self.sock.close()


@dataclass
class Fault:
    method: str
    path: str  # a regular expression searched in the request's path and query
    answer: str  # "503 Service Unavailable" (status and reason phrase), "reset" or "reset-after"
    times: int  # how many matching requests get it (then they pass)
    served: int = 0


class FaultProxy:
    """An HTTPS proxy on 127.0.0.1 in front of a TLS server (the PVE fake, same certificate)
    that answers the first `times` requests matching a fault with it, and passes the rest on.

    A fault's answer is a status line of its own, PVE style, with the message as the reason
    phrase ("595 No route to host", "500 can't lock file '...' - got timeout"); "reset": the
    connection is reset (RST) before the request reaches upstream; or "reset-after": upstream
    gets and carries out the request, then the connection is reset before the answer gets
    back. `seen` lists (method, path, answer or None) for every request, in order; each
    connection carries one request.
    """

    def __init__(self, upstream: int, certfile: str, keyfile: str):
        self.upstream = upstream
        self.faults: list[Fault] = []
        self.seen: list[tuple[str, str, str | None]] = []
        self.lock = threading.Lock()
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(certfile, keyfile)
        self._client_ctx = ssl._create_unverified_context()  # to the fake on 127.0.0.1 only
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                self.request.do_handshake()
                super().setup()

            def do_GET(self) -> None:  # noqa: N802 - http.server's names
                proxy._serve(self)

            do_POST = do_PUT = do_DELETE = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self) -> tuple[socket.socket, Any]:
                sock, addr = self.socket.accept()
                return server_ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # resets and broken handshakes are the point

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True, name="fault-proxy").start()

    def add(self, method: str, path: str, answer: str, times: int = 1) -> Fault:
        """Answer the next `times` requests `method` whose path matches regex `path` with `answer`."""
        fault = Fault(method, path, answer, times)
        with self.lock:
            self.faults.append(fault)
        return fault

    def count(self, method: str, path: str) -> int:
        """Requests `method` whose path matches regex `path` that reached the proxy (faulted or not)."""
        return sum(1 for m, p, _ in self.seen if m == method and re.search(path, p))

    def _take(self, method: str, path: str) -> str | None:
        with self.lock:
            for fault in self.faults:
                if fault.method == method and fault.served < fault.times and re.search(fault.path, path):
                    fault.served += 1
                    self.seen.append((method, path, fault.answer))
                    return fault.answer
            self.seen.append((method, path, None))
            return None

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        handler.close_connection = True
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        answer = self._take(handler.command, handler.path)
        if answer == "reset":
            return self._reset(handler)
        if answer and answer[:1].isdigit():
            status, _, reason = answer.partition(" ")
            return self._answer(handler, int(status), reason, [("Content-Type", "application/json")],
                                json.dumps({"data": None, "message": reason + "\n"}).encode())
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("connection", "keep-alive")}
        conn = http.client.HTTPSConnection("127.0.0.1", self.upstream, context=self._client_ctx, timeout=60)
        try:
            conn.request(handler.command, handler.path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        if answer == "reset-after":
            return self._reset(handler)
        skip = ("connection", "keep-alive", "transfer-encoding", "content-length", "server", "date")
        self._answer(handler, response.status, response.reason,
                     [(k, v) for k, v in response.getheaders() if k.lower() not in skip], data)

    @staticmethod
    def _answer(handler: BaseHTTPRequestHandler, status: int, reason: str, headers: list[tuple[str, str]],
                data: bytes) -> None:
        handler.send_response(status, reason)
        for k, v in headers:
            handler.send_header(k, v)
        handler.send_header("Content-Length", str(len(data)))
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(data)

    @staticmethod
    def _reset(handler: BaseHTTPRequestHandler) -> None:
        sock = handler.connection
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.rfile.close()  # the socket's last reference but this one: close() below sends the RST
        sock.close()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
