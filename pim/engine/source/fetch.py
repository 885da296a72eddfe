"""Installer ISOs: local files or http(s) downloads, always verified by sha256.

Downloads are resumable (HTTP Range), land in the cache under their checksum, and
a file that fails verification is deleted. Within a run, a download that fails on
the way (a connection error, a timeout, a body cut short, HTTP 5xx or 429) is tried
again under `retry.DOWNLOAD`, resuming from its `.part`; any other HTTP 4xx fails at
once. Hashing is memoized by (path, size, mtime_ns, inode) so a no-op build never
re-reads a multi-GB ISO.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from pathlib import Path

from pim.engine.errors import BuildError, ChecksumMismatch, InputError
from pim.engine.events import Emitter
from pim.engine.config.spec import Source
from pim.engine.retry import DOWNLOAD, retrying

CHUNK = 1 << 20
TIMEOUT = 60  # seconds for the connection and for each read of the body


class _Retry(BuildError):
    """A download failure worth another try (the connection, the server's 5xx or 429, a
    short body); raised as it is once retry.DOWNLOAD runs out."""


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
    """Fetch url into part, resuming from part's current size when the server allows.

    Failures on the way (see `_Retry`) are retried under retry.DOWNLOAD (5 tries within
    300 s), each from what part holds by then; each retry is logged. Raises BuildError
    naming the URL: at once for HTTP 4xx other than 429 (and other than 416 on a partial
    file, which means it is complete) or a local write error; after the last try
    otherwise ("run again to resume": the .part is kept).
    """
    try:
        retrying(DOWNLOAD, lambda: _fetch_once(url, part, events), transient=lambda e: isinstance(e, _Retry),
                 what=f"download of {url}", log=lambda text: events.log("source", text))
    except _Retry as e:
        notes = getattr(e, "__notes__", None)
        raise BuildError(f"{e} ({notes[0]})" if notes else str(e)) from None


def _fetch_once(url: str, part: Path, events: Emitter) -> None:
    """One GET of url into part (Range from part's size); raises _Retry or BuildError."""
    import http.client  # here, not at the top: a cached build loads no HTTP client
    import ssl
    import urllib.error
    import urllib.request

    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(req, timeout=TIMEOUT)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and have:  # already complete
            return
        error = _Retry if e.code >= 500 or e.code == 429 else BuildError
        raise error(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, ssl.SSLCertVerificationError) or not isinstance(reason, OSError) or \
                (isinstance(reason, socket.gaierror) and reason.errno == socket.EAI_NONAME):
            raise BuildError(f"download of {url} failed: {reason}") from None  # a bad name or certificate stays bad
        raise _Retry(f"download of {url} failed: {reason}") from None
    except (OSError, http.client.HTTPException) as e:  # a timeout or reset before the answer's headers
        raise _Retry(f"download of {url} failed: {str(e) or type(e).__name__}") from None
    with resp:
        resumed = resp.status == 206
        if resumed:
            start = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range") or "")
            if start is not None and int(start[1]) != have:  # not the range asked for: start over
                part.unlink(missing_ok=True)
                raise _Retry(f"download of {url}: the server answered bytes={have}- with "
                             f"{resp.headers.get('Content-Range')!r}; starting over")
        else:
            have = 0  # the server sent the whole file
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length else None
        events.log("source", f"downloading {url}" + (f" (resuming at {have} bytes)" if resumed else ""))
        done = have
        try:
            with open(part, "ab" if resumed else "wb") as out:
                while True:
                    try:
                        chunk = resp.read(CHUNK)
                    except (OSError, http.client.HTTPException) as e:  # reset, timeout, broken chunking
                        raise _Retry(f"download of {url} broke off at {done} bytes: {str(e) or type(e).__name__}; "
                                     "run again to resume") from None
                    if not chunk:
                        break
                    out.write(chunk)
                    done += len(chunk)
                    events.progress("source", done, total, "download")
        except OSError as e:  # the local file (reads raise _Retry, not OSError)
            raise BuildError(f"cannot write {part}: {e.strerror or e}; free space or fix the cache's "
                             "permissions") from None
    if total is not None and done != total:
        raise _Retry(f"download of {url} ended early at {done} of {total} bytes; run again to resume")
