"""The remote cache's objects in an S3 bucket, through boto3.

Layout under the configured prefix, content-addressed as BuildKit's S3 cache and Nix
binary caches are:

    blobs/sha256/<digest>     one file of a stage object, named by its sha256
    manifests/<key>.json      a `RemoteIndex`: the object's manifest and its files' digests
    refs/<image>.json         the newest final key pushed for an image (kept by prune)

An object is visible only once its index exists, and the index is written last,
with a conditional PUT (If-None-Match: *) so the first of two machines pushing the
same key wins and the other's blobs simply stay unreferenced. Two pushes never mix
files: each index names its own blobs by digest.

Retries are botocore's (`standard` mode) for each request; large files go up as S3
multipart uploads (parallel parts, each retried, an unfinished upload resumed by its
parts). botocore does not retry a response body that breaks while it streams: a
download resumes it with a Range GET under `retry.DOWNLOAD`. Per-key errors of a
DeleteObjects answer are retried under `retry.S3_DELETE` when S3 says "slow down" or
had an internal error, and fail naming the keys otherwise.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pim.engine.errors import BuildError
from pim.engine.remote.spec import CacheSpec
from pim.engine.retry import DOWNLOAD, S3_DELETE, retrying

INDEX_SCHEMA = 1
CHUNK = 1 << 20  # bytes per read while streaming a download
MULTIPART_CHUNK = 16 << 20  # bytes per multipart part (S3 allows 5 MiB to 5 GiB)


class RemoteCacheError(BuildError):
    """The remote cache could not be read or written (network, credentials, bucket)."""


class CorruptBlob(RemoteCacheError):
    """A downloaded file's size or sha256 is not what the object's index says."""


class BadIndex(CorruptBlob):
    """An object's index in the bucket cannot be read or is unsafe to follow."""


class _StreamBroke(Exception):
    """A GetObject body stopped part-way (reset, read timeout, short body); the cause
    is chained. Internal: a download resumes after it, or turns it into RemoteCacheError."""


class _KeysNotDeleted(Exception):
    """DeleteObjects answered with per-key errors: [(key, code, message)]; `transient`
    when every one of them is worth another try (SlowDown, InternalError...)."""

    def __init__(self, errors: list[tuple[str, str, str]], transient: bool):
        self.errors, self.transient = errors, transient
        super().__init__(", ".join(f"{k} ({c}: {m})" if m else f"{k} ({c})" for k, c, m in errors[:5])
                         + (f" and {len(errors) - 5} more" if len(errors) > 5 else ""))


# Per-key DeleteObjects error codes that may clear on another try (S3's error code list:
# 5xx-class and throttling); every other code (AccessDenied, ...) is final.
_DELETE_TRANSIENT = ("SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "OperationAborted")


_DIGEST = r"^[0-9a-f]{64}$"
# A file name in an object folder: one path segment, never "." or ".." (an index is
# data from the bucket: a name like "../x" must not write outside the pull's staging).
_FILE_NAME = re.compile(r"^(?!\.{1,2}$)[A-Za-z0-9._-]{1,100}$")


class Blob(BaseModel):
    """One file of a remote object: its digest, size in bytes, and for a qcow2 overlay
    the stage whose disk backs it (rebased to the local store's path on pull)."""

    model_config = ConfigDict(extra="ignore")

    sha256: str = Field(pattern=_DIGEST)
    size: int = Field(ge=0)
    backing: str | None = None


class RemoteIndex(BaseModel):
    """manifests/<key>.json: what a pulled object is and which blobs make it."""

    model_config = ConfigDict(extra="ignore")

    schema_version: int = INDEX_SCHEMA
    key: str
    stage: str
    image: str | None = None
    pushed: str
    pim_version: str = ""
    manifest: dict[str, Any]
    files: dict[str, Blob]

    @field_validator("files")
    @classmethod
    def _names(cls, files: dict[str, Blob]) -> dict[str, Blob]:
        bad = [name for name in files if not _FILE_NAME.match(name)]
        if bad:
            raise ValueError(f"file names that are not one plain path segment: {bad[:3]}")
        return files

    @property
    def size(self) -> int:
        return sum(b.size for b in self.files.values())


class Bucket:
    """The configured bucket and prefix, with the few calls the cache makes.

    Raises RemoteCacheError naming the bucket and what failed; a missing key is
    None/False, not an error.
    """

    def __init__(self, spec: CacheSpec):
        import boto3
        from botocore.config import Config as BotoConfig

        from botocore.exceptions import BotoCoreError

        self.spec = spec
        self.name, self.prefix = spec.bucket, spec.prefix
        self.cancelled = threading.Event()  # set: uploads stop at their next part (the build ended)
        try:
            session = boto3.session.Session(profile_name=spec.profile, region_name=spec.region)
            self.client = session.client("s3", endpoint_url=spec.endpoint_url, config=BotoConfig(
                retries={"mode": "standard", "max_attempts": 5}, connect_timeout=10, read_timeout=60))
        except BotoCoreError as e:  # an unknown profile, a bad region name
            raise RemoteCacheError(f"remote cache {spec.remote}: {e} (see cache.profile and cache.region)") from None

    def __str__(self) -> str:
        return self.spec.remote

    # -- names --------------------------------------------------------------
    def manifest_key(self, key: str) -> str:
        return f"{self.prefix}manifests/{key}.json"

    def blob_key(self, digest: str) -> str:
        return f"{self.prefix}blobs/sha256/{digest}"

    def ref_key(self, image: str) -> str:
        return f"{self.prefix}refs/{image}.json"

    # -- calls --------------------------------------------------------------
    def _fail(self, what: str, e: Exception) -> RemoteCacheError:
        return RemoteCacheError(f"remote cache {self}: {what} failed: {e}")

    def get_json(self, s3key: str) -> Any | None:
        """The JSON document at s3key, or None when there is none; BadIndex when it is not JSON."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body = self.client.get_object(Bucket=self.name, Key=s3key)["Body"].read()
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise self._fail(f"reading {s3key}", e) from None
        except BotoCoreError as e:
            raise self._fail(f"reading {s3key}", e) from None
        try:
            return json.loads(body)
        except ValueError:
            raise BadIndex(f"remote cache {self}: {s3key} is not JSON") from None

    def put_json(self, s3key: str, data: Any, only_new: bool = False) -> bool:
        """Write a JSON document; with only_new, only if nothing is there yet (a
        conditional PUT). Returns False when only_new and the key already existed."""
        from botocore.exceptions import BotoCoreError, ClientError

        extra = {"IfNoneMatch": "*"} if only_new else {}
        try:
            self.client.put_object(Bucket=self.name, Key=s3key, Body=json.dumps(data, indent=1).encode(),
                                   ContentType="application/json", **extra)
        except ClientError as e:
            if only_new and e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
                return False
            raise self._fail(f"writing {s3key}", e) from None
        except BotoCoreError as e:
            raise self._fail(f"writing {s3key}", e) from None
        return True

    def exists(self, s3key: str, size: int | None = None) -> bool:
        """True when s3key is there (and, given `size`, has that many bytes)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            head = self.client.head_object(Bucket=self.name, Key=s3key)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return False
            raise self._fail(f"looking up {s3key}", e) from None
        except BotoCoreError as e:
            raise self._fail(f"looking up {s3key}", e) from None
        return size is None or head.get("ContentLength") == size

    def index(self, key: str) -> RemoteIndex | None:
        """The remote object `key`, or None when it was never pushed. Raises BadIndex
        when its index is there but is not one (unreadable JSON, unsafe file names)."""
        s3key = self.manifest_key(key)
        data = self.get_json(s3key)
        if data is None:
            return None
        try:
            return RemoteIndex.model_validate(data)
        except ValidationError as e:
            raise BadIndex(f"remote cache {self}: {s3key} is not a valid index "
                           f"({e.errors()[0]['loc']}: {e.errors()[0]['msg']})") from None

    def upload(self, path: Path, s3key: str, progress: Callable[[int], None]) -> int:
        """Upload a file; above MULTIPART_CHUNK as a multipart upload, parts in parallel,
        each retried by botocore. An upload an earlier push left unfinished is resumed:
        its parts whose size and MD5 (the part's ETag) match are kept. Returns the bytes
        kept that way; raises RemoteCacheError."""
        from botocore.exceptions import BotoCoreError, ClientError

        size = path.stat().st_size
        try:
            if size <= MULTIPART_CHUNK:
                with open(path, "rb") as f:
                    self.client.put_object(Bucket=self.name, Key=s3key, Body=f)
                progress(size)
                return 0
            return self._multipart(path, s3key, size, progress)
        except (BotoCoreError, ClientError) as e:
            raise self._fail(f"uploading {path.name}", e) from None

    def _multipart(self, path: Path, s3key: str, size: int, progress: Callable[[int], None]) -> int:
        from concurrent.futures import ThreadPoolExecutor
        from botocore.exceptions import ClientError

        upload_id, have = self._unfinished(s3key)
        if upload_id is None:
            upload_id = self.client.create_multipart_upload(Bucket=self.name, Key=s3key)["UploadId"]
        count = -(-size // MULTIPART_CHUNK)
        parts: dict[int, str] = {}
        kept = 0

        def send(number: int) -> tuple[int, str, bool]:
            if self.cancelled.is_set():
                raise RemoteCacheError(f"remote cache {self}: the upload of {path.name} was stopped")
            with open(path, "rb") as f:
                f.seek((number - 1) * MULTIPART_CHUNK)
                data = f.read(MULTIPART_CHUNK)
            etag = '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'
            if have.get(number) == (etag, len(data)):
                progress(len(data))
                return number, etag, True
            got = self.client.upload_part(Bucket=self.name, Key=s3key, UploadId=upload_id, PartNumber=number,
                                          Body=data)["ETag"]
            progress(len(data))
            return number, got, False

        pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pim-upload")
        try:
            for number, etag, reused in pool.map(send, range(1, count + 1)):
                parts[number] = etag
                kept += min(MULTIPART_CHUNK, size - (number - 1) * MULTIPART_CHUNK) if reused else 0
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        try:
            self.client.complete_multipart_upload(
                Bucket=self.name, Key=s3key, UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": parts[n]} for n in sorted(parts)]})
        except ClientError:
            if not self.exists(s3key, size):  # another machine completed the same blob first
                raise
        return kept

    def _unfinished(self, s3key: str) -> tuple[str | None, dict[int, tuple[str, int]]]:
        """The newest unfinished multipart upload of s3key and its parts {number: (ETag, size)}."""
        uploads = [u for u in self.client.list_multipart_uploads(Bucket=self.name, Prefix=s3key).get("Uploads", [])
                   if u["Key"] == s3key]
        if not uploads:
            return None, {}
        newest = max(uploads, key=lambda u: u["Initiated"])
        have: dict[int, tuple[str, int]] = {}
        for page in self.client.get_paginator("list_parts").paginate(Bucket=self.name, Key=s3key,
                                                                     UploadId=newest["UploadId"]):
            have.update({p["PartNumber"]: (p["ETag"], p["Size"]) for p in page.get("Parts", [])})
        return newest["UploadId"], have

    def abort_unfinished(self, older_than: datetime.datetime, dry_run: bool = False) -> int:
        """Abort multipart uploads under the prefix started before `older_than` (pushes
        that never finished); returns how many."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            stale = [u for page in self.client.get_paginator("list_multipart_uploads").paginate(
                         Bucket=self.name, Prefix=f"{self.prefix}blobs/")
                     for u in page.get("Uploads", []) if u["Initiated"] < older_than]
            if not dry_run:
                for u in stale:
                    self.client.abort_multipart_upload(Bucket=self.name, Key=u["Key"], UploadId=u["UploadId"])
        except (BotoCoreError, ClientError) as e:
            raise self._fail("aborting unfinished uploads", e) from None
        return len(stale)

    def download(self, blob: Blob, dest: Path, progress: Callable[[int], None], mode: int = 0o644,
                 log: Callable[[str], None] | None = None) -> None:
        """Stream blob into dest (a new file with `mode`), hashing as it comes.

        progress(n) gets each chunk's length in bytes. A body stream that breaks
        part-way (read timeout, connection reset, short body: botocore does not retry
        those) is resumed with a Range GET from the bytes already written, under
        `retry.DOWNLOAD`; each retry is reported through `log`. Raises CorruptBlob
        (dest removed) when the bytes are not the blob's size and sha256, or the blob is
        missing (pruned under a push that still named it); RemoteCacheError (dest
        removed) when the bucket cannot be read or the stream keeps breaking.
        """
        from botocore.exceptions import BotoCoreError, ClientError, FlexibleChecksumError

        s3key = self.blob_key(blob.sha256)
        state = {"hash": hashlib.sha256(), "got": 0}

        def attempt(f: Any) -> None:
            got = state["got"]
            try:
                rest = {"Range": f"bytes={got}-"} if got else {}
                resp = self.client.get_object(Bucket=self.name, Key=s3key, **rest)
            except ClientError as e:
                code = e.response.get("Error", {}).get("Code")
                if code in ("NoSuchKey", "404"):
                    raise CorruptBlob(f"remote cache {self}: {dest.name} is missing "
                                      f"(blob {blob.sha256[:12]})") from None
                if got and code in ("InvalidRange", "416"):
                    return  # nothing after what we have: the size and sha256 check decides
                raise
            body = resp["Body"]
            try:
                if got and not str(resp.get("ContentRange") or "").startswith(f"bytes {got}-"):
                    if resp.get("ContentRange"):
                        raise RemoteCacheError(f"remote cache {self}: asked for {dest.name} from byte {got}, "
                                               f"got {resp['ContentRange']}")
                    f.seek(0)  # the whole object came back (Range ignored): start over
                    f.truncate()
                    state["hash"], state["got"] = hashlib.sha256(), 0
                while True:
                    chunk = _read(body)
                    if not chunk:
                        return
                    f.write(chunk)
                    state["hash"].update(chunk)
                    state["got"] += len(chunk)
                    progress(len(chunk))
            finally:
                body.close()

        try:
            with os.fdopen(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as f:
                retrying(DOWNLOAD, lambda: attempt(f), transient=lambda e: isinstance(e, _StreamBroke),
                         what=f"remote cache {self}: downloading {dest.name}", log=log)
        except FlexibleChecksumError as e:
            dest.unlink(missing_ok=True)
            raise CorruptBlob(f"remote cache {self}: {dest.name} is corrupt ({e})") from None
        except _StreamBroke as e:
            dest.unlink(missing_ok=True)
            notes = "; ".join(getattr(e, "__notes__", []))
            raise RemoteCacheError(f"remote cache {self}: downloading {dest.name} failed at byte {state['got']} of "
                                   f"{blob.size}: {e.__cause__}" + (f" ({notes})" if notes else "")) from None
        except (BotoCoreError, ClientError) as e:
            dest.unlink(missing_ok=True)
            raise self._fail(f"downloading {dest.name}", e) from None
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        got, digest = state["got"], state["hash"].hexdigest()
        if got != blob.size or digest != blob.sha256:
            dest.unlink(missing_ok=True)
            raise CorruptBlob(f"remote cache {self}: {dest.name} is corrupt ({got} bytes, sha256 {digest[:12]}; "
                              f"its index says {blob.size} bytes, sha256 {blob.sha256[:12]})")

    def list(self, sub: str) -> Iterator[dict[str, Any]]:
        """Every S3 object under prefix + sub ({"Key", "Size", "LastModified", ...})."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name,
                                                                              Prefix=f"{self.prefix}{sub}"):
                yield from page.get("Contents", [])
        except (BotoCoreError, ClientError) as e:
            raise self._fail(f"listing {self.prefix}{sub}", e) from None

    def delete(self, s3keys: list[str]) -> None:
        """Delete keys, up to 1000 per request (S3 DeleteObjects' limit).

        DeleteObjects answers 200 even when some keys were not deleted; those come back
        in its `Errors`. Keys that failed with a code S3 means as "try again" (SlowDown,
        InternalError, ServiceUnavailable...) are sent again under `retry.S3_DELETE`; a
        key already gone (NoSuchKey) counts as deleted. Raises RemoteCacheError naming
        the keys that were not deleted and why, and for a failed request.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        for i in range(0, len(s3keys), 1000):
            pending = s3keys[i:i + 1000]

            def attempt() -> None:
                nonlocal pending
                answer = self.client.delete_objects(Bucket=self.name, Delete={
                    "Objects": [{"Key": k} for k in pending], "Quiet": True})
                errors = [(e.get("Key", "?"), e.get("Code", "?"), e.get("Message", ""))
                          for e in answer.get("Errors", []) if e.get("Code") != "NoSuchKey"]
                if errors:
                    transient = all(code in _DELETE_TRANSIENT for _, code, _ in errors)
                    if transient:
                        pending = [k for k, _, _ in errors]  # the next try sends only these
                    raise _KeysNotDeleted(errors, transient)

            try:
                retrying(S3_DELETE, attempt, transient=lambda e: isinstance(e, _KeysNotDeleted) and e.transient,
                         what=f"remote cache {self}: deleting")
            except _KeysNotDeleted as e:
                notes = "; ".join(getattr(e, "__notes__", []))
                raise RemoteCacheError(f"remote cache {self}: {len(e.errors)} key(s) were not deleted: {e}"
                                       + (f" ({notes})" if notes else "")) from None
            except (BotoCoreError, ClientError) as e:
                raise self._fail("deleting", e) from None


def _read(body: Any) -> bytes:
    """The next chunk (at most CHUNK bytes) of a GetObject body, b"" at its end. Raises
    _StreamBroke when the stream breaks (botocore's ReadTimeoutError,
    ResponseStreamingError or IncompleteReadError; a reset or short body from urllib3 or
    http.client); a failed response checksum (FlexibleChecksumError) is raised as it is."""
    import http.client

    from botocore.exceptions import BotoCoreError, FlexibleChecksumError
    from urllib3.exceptions import HTTPError as Urllib3Error

    try:
        return body.read(CHUNK)
    except FlexibleChecksumError:
        raise
    except (BotoCoreError, OSError, http.client.HTTPException, Urllib3Error) as e:
        raise _StreamBroke(str(e)) from e

