"""Installer ISOs: local files or http(s) downloads, always verified by sha256.

Downloads are resumable (HTTP Range), land in the cache under their checksum, and
a file that fails verification is deleted. Hashing is memoized by
(path, size, mtime_ns, inode) so a no-op build never re-reads a multi-GB ISO.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from pim.engine.errors import BuildError, ChecksumMismatch, InputError
from pim.engine.events import Emitter
from pim.engine.config.spec import Source

CHUNK = 1 << 20


def _memo_path(cache: Path) -> Path:
    return cache / "hashes.json"


def sha256_file(path: Path, cache: Path | None = None) -> str:
    """sha256 of a file, memoized in the cache by its identity (path, size, mtime_ns, inode)."""
    st = path.stat()
    ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    memo: dict[str, str] = {}
    if cache is not None:
        try:
            memo = json.loads(_memo_path(cache).read_text())
        except (OSError, ValueError):
            memo = {}
        if ident in memo:
            return memo[ident]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    if cache is not None:
        memo[ident] = digest
        tmp = _memo_path(cache).with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, _memo_path(cache))
    return digest


def resolve_iso(source: Source, base_dir: Path, cache: Path, events: Emitter) -> tuple[Path, str]:
    """Return (local path, sha256) of a verified ISO."""
    if not source.is_url:
        path = (base_dir / source.iso).resolve()
        if not path.is_file():
            raise InputError(f"source.iso: {path} does not exist; fix the path in the config")
        digest = sha256_file(path, cache)
        if source.sha256 and digest != source.sha256:
            raise ChecksumMismatch(str(path), source.sha256, digest)
        return path, digest
    assert source.sha256 is not None  # the spec requires it for URLs
    isos = cache / "isos"
    isos.mkdir(parents=True, exist_ok=True)
    final = isos / f"{source.sha256}.iso"
    if final.is_file():
        return final, source.sha256
    part = isos / f"{source.sha256}.iso.part"
    _download(source.iso, part, events)
    digest = sha256_file(part)
    if digest != source.sha256:
        part.unlink(missing_ok=True)
        raise ChecksumMismatch(source.iso, source.sha256, digest)
    os.replace(part, final)
    return final, digest


def _download(url: str, part: Path, events: Emitter) -> None:
    """Fetch url into part, resuming from part's current size when the server allows."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(req, timeout=60)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # already complete
            return
        raise BuildError(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise BuildError(f"download of {url} failed: {getattr(e, 'reason', e)}") from None
    with resp:
        resumed = resp.status == 206
        if not resumed:
            have = 0  # the server sent the whole file
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length else None
        events.log("source", f"downloading {url}" + (f" (resuming at {have} bytes)" if resumed else ""))
        done = have
        with open(part, "ab" if resumed else "wb") as out:
            while chunk := resp.read(CHUNK):
                out.write(chunk)
                done += len(chunk)
                events.progress("source", done, total, "download")
    if total is not None and done != total:
        raise BuildError(f"download of {url} ended early at {done} of {total} bytes; run again to resume")
