"""A qcow2 read as the raw disk it stands for, in constant memory.

`qemu-img map` says which ranges hold data; qemu-nbd (read-only, on a private
unix socket) decodes the qcow2 (compressed clusters included) and a small NBD
client reads only those ranges. Holes are never read; data blocks that turn out
to be all zeros are dropped too. No temporary raw file is written.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import socket
import struct
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from pim.engine.deploy.model import DeployError
from pim.engine.errors import WaitAborted, WaitTimeout
from pim.engine.run import run, spawn_detached
from pim.engine.wait import until

EBS_BLOCK = 512 * 1024  # the EBS direct APIs' only block size

# NBD fixed-newstyle protocol constants (doc/proto.md in the NBD project).
_NBDMAGIC, _IHAVEOPT = 0x4E42444D41474943, 0x49484156454F5054
_OPT_REPLY_MAGIC, _REQUEST_MAGIC, _SIMPLE_REPLY_MAGIC = 0x3E889045565A9, 0x25609513, 0x67446698
_OPT_GO, _REP_ACK, _REP_INFO, _INFO_EXPORT = 7, 1, 3, 0
_FLAG_FIXED_NEWSTYLE, _FLAG_NO_ZEROES = 1, 2
_CMD_READ, _CMD_DISC = 0, 2


@dataclass(frozen=True)
class Extent:
    start: int
    length: int
    data: bool  # False: reads as zeros (a hole or a zero cluster)


def parse_map(entries: list[dict[str, Any]]) -> list[Extent]:
    """qemu-img map's JSON as extents, merged where neighbours agree."""
    out: list[Extent] = []
    for e in entries:
        data = bool(e.get("data")) and not e.get("zero")
        if out and out[-1].data == data and out[-1].start + out[-1].length == e["start"]:
            out[-1] = Extent(out[-1].start, out[-1].length + e["length"], data)
        else:
            out.append(Extent(e["start"], e["length"], data))
    return out


def block_runs(extents: list[Extent], block_size: int) -> Iterator[tuple[int, int]]:
    """[first, end) block-index runs that touch data; every other block is zero for sure."""
    run_first = run_end = -1
    for e in extents:
        if not e.data or e.length == 0:
            continue
        first, end = e.start // block_size, (e.start + e.length - 1) // block_size + 1
        if first <= run_end:
            run_end = max(run_end, end)
            continue
        if run_end > run_first:
            yield run_first, run_end
        run_first, run_end = first, end
    if run_end > run_first:
        yield run_first, run_end


class NbdClient:
    """Just enough of the NBD client side: fixed newstyle, NBD_OPT_GO, simple-reply reads."""

    def __init__(self, sock: socket.socket, export: str):
        self.sock, self.size, self._handle = sock, 0, 0
        magic, opt, flags = struct.unpack(">QQH", self._recv(18))
        if magic != _NBDMAGIC or opt != _IHAVEOPT or not flags & _FLAG_FIXED_NEWSTYLE:
            raise DeployError("qemu-nbd did not answer as a fixed-newstyle NBD server")
        no_zeroes = flags & _FLAG_NO_ZEROES
        self.sock.sendall(struct.pack(">I", _FLAG_FIXED_NEWSTYLE | no_zeroes))
        name = export.encode()
        payload = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
        self.sock.sendall(struct.pack(">QII", _IHAVEOPT, _OPT_GO, len(payload)) + payload)
        while True:
            magic, _, rtype, length = struct.unpack(">QIII", self._recv(20))
            body = self._recv(length) if length else b""
            if magic != _OPT_REPLY_MAGIC:
                raise DeployError("bad NBD option reply")
            if rtype & 0x80000000:
                raise DeployError(f"NBD server refused the export: {body[4:].decode(errors='replace')}")
            if rtype == _REP_INFO and struct.unpack(">H", body[:2])[0] == _INFO_EXPORT:
                self.size = struct.unpack(">QH", body[2:12])[0]
            if rtype == _REP_ACK:
                return

    def _recv(self, n: int) -> bytes:
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            k = self.sock.recv_into(view[got:])
            if not k:
                raise DeployError("the NBD server closed the connection")
            got += k
        return bytes(buf)

    def read(self, offset: int, length: int) -> bytes:
        self._handle += 1
        self.sock.sendall(struct.pack(">IHHQQI", _REQUEST_MAGIC, 0, _CMD_READ, self._handle, offset, length))
        magic, err, handle = struct.unpack(">IIQ", self._recv(16))
        if magic != _SIMPLE_REPLY_MAGIC or handle != self._handle:
            raise DeployError("bad NBD reply")
        if err:
            raise DeployError(f"NBD read at {offset} failed with error {err}")
        return self._recv(length)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(struct.pack(">IHHQQI", _REQUEST_MAGIC, 0, _CMD_DISC, 0, 0, 0))
        self.sock.close()


@dataclass
class ReadStats:
    virtual_size: int = 0
    bytes_read: int = 0  # read from the image (data extents only)
    blocks_total: int = 0
    blocks_data: int = 0  # blocks handed on: not all zeros
    blocks_zero: int = 0  # never sent: a hole, or read and found to be zeros
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "extra"} | self.extra


class RawDisk:
    """Random access to the raw contents of a qcow2; zeros are synthesised, not read."""

    def __init__(self, client: NbdClient, extents: list[Extent]):
        self.client, self.extents, self.size = client, extents, client.size
        self._starts = [e.start for e in extents]
        self.stats = ReadStats(virtual_size=self.size)

    def read(self, offset: int, length: int) -> bytes:
        """Bytes [offset, offset+length) of the disk; past the end reads as zeros."""
        out = bytearray(length)
        end = min(offset + length, self.size)
        i = max(bisect.bisect_right(self._starts, offset) - 1, 0)
        while i < len(self.extents) and offset < end:
            e = self.extents[i]
            lo, hi = max(offset, e.start), min(end, e.start + e.length)
            if e.data and hi > lo:
                chunk = self.client.read(lo, hi - lo)
                out[lo - offset:hi - offset] = chunk
                self.stats.bytes_read += len(chunk)
            if e.start + e.length >= end:
                break
            i += 1
        return bytes(out)

    def blocks(self, block_size: int = EBS_BLOCK) -> Iterator[tuple[int, bytes]]:
        """(index, data) of every block that is not all zeros, in order."""
        zero = bytes(block_size)
        t0 = time.monotonic()
        self.stats.blocks_total = -(-self.size // block_size)
        for first, end in block_runs(self.extents, block_size):
            for index in range(first, min(end, self.stats.blocks_total)):
                data = self.read(index * block_size, block_size)
                if data == zero:
                    continue
                self.stats.blocks_data += 1
                yield index, data
        self.stats.blocks_zero = self.stats.blocks_total - self.stats.blocks_data
        self.stats.seconds = round(time.monotonic() - t0, 3)


def image_map(path: Path) -> list[Extent]:
    out = run(["qemu-img", "map", "--output=json", "-f", "qcow2", "-U", str(path)], timeout=300).stdout
    return parse_map(json.loads(out))


@contextlib.contextmanager
def open_raw(path: Path, start_timeout: float = 20.0) -> Iterator[RawDisk]:
    """Serve path read-only with qemu-nbd on a private socket and read it as a raw disk."""
    if not path.is_file():
        raise DeployError(f"the built image {path} is missing: build it again")
    extents = image_map(path)
    with tempfile.TemporaryDirectory(prefix="pim-nbd-") as tmp:
        sock_path = Path(tmp) / "nbd.sock"
        proc = spawn_detached(["qemu-nbd", "--read-only", "--format=qcow2", "--export-name=pim",
                               f"--socket={sock_path}", str(path)], Path(tmp) / "qemu-nbd.log")
        client = None

        def connect() -> NbdClient:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(60)
            try:
                sock.connect(str(sock_path))
                return NbdClient(sock, "pim")
            except BaseException:
                sock.close()
                raise

        try:
            try:
                client = until(connect, what=f"qemu-nbd's socket {sock_path}", timeout=start_timeout, interval=0.02,
                               alive=lambda: proc.poll() is None, ignore=(FileNotFoundError, ConnectionRefusedError))
            except WaitAborted:
                tail = (Path(tmp) / "qemu-nbd.log").read_text(errors="replace").splitlines()[-10:]
                raise DeployError(f"qemu-nbd exited with status {proc.returncode}", tail) from None
            except WaitTimeout:
                raise DeployError(f"qemu-nbd did not open {sock_path} within {start_timeout:.0f} s") from None
            yield RawDisk(client, extents)
        finally:
            if client is not None:
                client.close()
            proc.terminate()
            try:
                proc.wait(10)
            except Exception:
                proc.kill()
                proc.wait()
