"""QEMU guest agent client over its unix socket (virtio-serial org.qemu.guest_agent.0).

The protocol is one JSON object per line. Because the socket accepts connections
before the agent in the guest runs, every session starts with guest-sync-delimited
to discard stale bytes and prove the agent is alive.
"""

from __future__ import annotations

import base64
import json
import random
import socket
import time
from pathlib import Path
from typing import Any, Callable

from pim.engine.errors import VMError, WaitAborted, WaitTimeout
from pim.engine.wait import until


class AgentError(VMError):
    pass


class GuestAgent:
    def __init__(self, path: Path, timeout: float = 10.0):
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""

    # -- connection ---------------------------------------------------------
    def connect(self, timeout: float | None = None) -> "GuestAgent":
        """Connect and sync; raises AgentError if the agent does not answer in time."""
        self.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout or self.timeout)
        try:
            sock.connect(str(self.path))
        except OSError as e:
            sock.close()
            raise AgentError(f"guest agent socket {self.path}: {e}") from None
        self._sock, self._buf = sock, b""
        token = random.randint(1, 2**31 - 1)
        self._send({"execute": "guest-sync-delimited", "arguments": {"id": token}})
        deadline = time.monotonic() + (timeout or self.timeout)
        # Skip everything up to the 0xFF sentinel the agent sends before its reply.
        while b"\xff" not in self._buf:
            self._fill(deadline)
        self._buf = self._buf.split(b"\xff", 1)[1]
        while True:
            reply = self._read(deadline)
            if reply.get("return") == token:
                return self

    def wait_ready(self, timeout: float, alive: Callable[[], bool] | None = None) -> "GuestAgent":
        """Connect, retrying each second until the agent answers; timeout in seconds.

        Raises AgentError when timeout passes or as soon as alive() returns False.
        """
        deadline = time.monotonic() + timeout
        try:
            return until(lambda: self.connect(timeout=min(5.0, max(0.5, deadline - time.monotonic()))),
                         what="the guest agent", timeout=timeout, interval=1.0, alive=alive, ignore=(AgentError,))
        except (WaitTimeout, WaitAborted):
            raise AgentError(f"guest agent did not answer within {timeout:.0f}s") from None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, msg: dict[str, Any]) -> None:
        assert self._sock is not None
        try:
            self._sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError as e:
            raise AgentError(f"guest agent connection failed: {e}") from None

    def _fill(self, deadline: float) -> None:
        assert self._sock is not None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AgentError("guest agent timed out")
        self._sock.settimeout(remaining)
        try:
            data = self._sock.recv(65536)
        except (TimeoutError, socket.timeout):
            raise AgentError("guest agent timed out") from None
        except OSError as e:
            raise AgentError(f"guest agent connection failed: {e}") from None
        if not data:
            raise AgentError("guest agent closed the connection")
        self._buf += data

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\n" not in self._buf:
            self._fill(deadline)
        line, self._buf = self._buf.split(b"\n", 1)
        line = line.strip(b"\xff \r")
        if not line:
            return self._read(deadline)
        try:
            return json.loads(line)
        except ValueError:
            raise AgentError(f"guest agent sent invalid JSON: {line[:200]!r}") from None

    # -- commands -----------------------------------------------------------
    def call(self, command: str, timeout: float | None = None, **arguments: Any) -> Any:
        if self._sock is None:
            self.connect()
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self._send(msg)
        reply = self._read(time.monotonic() + (timeout or self.timeout))
        if "error" in reply:
            err = reply["error"]
            raise AgentError(f"guest agent {command}: {err.get('class')}: {err.get('desc')}")
        return reply.get("return")

    def ping(self) -> None:
        self.call("guest-ping")

    def info(self) -> dict[str, Any]:
        return self.call("guest-info")

    def network_interfaces(self) -> list[dict[str, Any]]:
        return self.call("guest-network-get-interfaces")

    def exec(self, argv: list[str], input: bytes | None = None, timeout: float = 60.0) -> tuple[int, bytes, bytes]:
        """Run argv in the guest; return (exit code, stdout, stderr)."""
        args: dict[str, Any] = {"path": argv[0], "arg": argv[1:], "capture-output": True}
        if input is not None:
            args["input-data"] = base64.b64encode(input).decode()
        pid = self.call("guest-exec", **args)["pid"]

        def finished() -> dict[str, Any] | None:
            st = self.call("guest-exec-status", pid=pid)
            return st if st.get("exited") else None

        try:
            st = until(finished, what=f"guest-exec {argv[0]}", timeout=timeout, interval=0.2)
        except WaitTimeout:
            raise AgentError(f"guest-exec {argv[0]} did not finish within {timeout:.0f}s") from None
        out = base64.b64decode(st.get("out-data", ""))
        err = base64.b64decode(st.get("err-data", ""))
        code = st.get("exitcode", -st.get("signal", 0))
        return int(code), out, err

    def file_read(self, path: str, limit: int = 16 << 20) -> bytes:
        handle = self.call("guest-file-open", path=path, mode="r")
        data = b""
        try:
            while len(data) < limit:
                chunk = self.call("guest-file-read", handle=handle, count=1 << 20)
                data += base64.b64decode(chunk.get("buf-b64", ""))
                if chunk.get("eof") or not chunk.get("count"):
                    break
        finally:
            self.call("guest-file-close", handle=handle)
        return data

    def file_write(self, path: str, data: bytes) -> None:
        handle = self.call("guest-file-open", path=path, mode="w")
        try:
            self.call("guest-file-write", handle=handle, **{"buf-b64": base64.b64encode(data).decode()})
        finally:
            self.call("guest-file-close", handle=handle)

    def shutdown(self, mode: str = "powerdown") -> None:
        """Ask the guest to power off. A successful shutdown sends no reply."""
        if self._sock is None:
            self.connect()
        self._send({"execute": "guest-shutdown", "arguments": {"mode": mode}})
