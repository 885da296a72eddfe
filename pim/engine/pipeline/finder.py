"""Where a build finds its stage objects, and where it sends them.

`usable` says whether the local store holds an object the build can use. `Finder`
adds the remote cache: on a local miss it pulls the object, and each object the
build publishes is pushed from a background thread while the build goes on (the
guest's time hides the upload); the build's end waits for the last push.
"""

from __future__ import annotations

import contextlib
import queue
import threading

from pim.engine.events import Emitter
from pim.engine.remote.s3 import Bucket
from pim.engine.store import manifest as manifests
from pim.engine.store.manifest import Manifest
from pim.engine.store.objects import Store


def usable(store: Store, key: str, held: contextlib.ExitStack) -> Manifest | None:
    """The manifest of object `key` when it and every object it reads are published, and
    those are the very objects it was built on (a rebuilt backing object has a new
    `id`, and an overlay on the old one would read wrong bytes); else None. Leases
    them all and reads each manifest once."""
    if not store.has(key):
        return None
    try:
        m = store.manifest(key)
    except manifests.ManifestError:
        return None
    for stage, dep in m.reads.items():
        held.enter_context(store.lease(dep))
        used = usable(store, dep, held)
        if used is None or (stage in m.uses_ids and used.id != m.uses_ids[stage]):
            return None
    return m


class Finder:
    """The local store, else the remote cache (pulled into the store); pushes in the
    background. A remote that fails is dropped for the rest of the build with a
    warning. Use as a context manager: leaving it stops an upload still running."""

    def __init__(self, store: Store, remote: Bucket | None, events: Emitter):
        self.store, self.remote, self.events = store, remote, events
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._pushed: list[str] = []
        self._held_back: dict[str, str] = {}
        self._bytes = self._resumed = 0
        self._missed: set[str] = set()  # keys the remote did not have (or could not be trusted for)

    def __enter__(self) -> "Finder":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None and self._thread.is_alive():
            if self.remote is not None:
                self.remote.cancelled.set()  # the upload stops at its next part
            self._queue.put(None)
            self._thread.join(timeout=30)

    def usable(self, key: str, held: contextlib.ExitStack) -> Manifest | None:
        """The local object's manifest (see `usable`), pulling it first on a local miss."""
        found = usable(self.store, key, held)
        if found is not None or self.remote is None or key in self._missed:
            return found
        from pim.engine.remote.transfer import RemoteCacheError, pull

        try:
            pulled = pull(self.remote, self.store, key, self.events, held)
        except RemoteCacheError as e:
            self._drop(f"{e}; going on without the remote cache")
            return None
        if pulled is None:
            self._missed.add(key)  # the plan asks again for the final key: one remote lookup is enough
            return None
        return usable(self.store, key, held)

    def published(self, key: str) -> None:
        """Object `key` was just published: push it (and what it uses) in the background."""
        if self.remote is None or not self.remote.spec.push:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="pim-push", daemon=True)
            self._thread.start()
        self._queue.put(key)

    def finish(self, key: str) -> None:
        """Push `key`'s lineage, wait for every push of this build, and say what went up."""
        self.published(key)
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join()
        if self._pushed:
            mib = 1 << 20
            resumed = f", {self._resumed / mib:.1f} MiB of it resumed" if self._resumed else ""
            self.events.log(None, f"pushed {len(self._pushed)} object(s) to {self.remote} "
                                  f"({self._bytes / mib:.1f} MiB uploaded{resumed})")
        for k, why in self._held_back.items():
            self.events.log(None, f"not pushed: {k[:12]} ({why})")

    def _work(self) -> None:
        from pim.engine.remote.transfer import RemoteCacheError, push

        while (key := self._queue.get()) is not None:
            remote = self.remote
            if remote is None or remote.cancelled.is_set():
                continue
            try:
                report = push(remote, self.store, key, self.events)
            except RemoteCacheError as e:
                if not remote.cancelled.is_set():
                    self._drop(f"{e}; the build is kept here, the next build pushes it")
                continue
            except manifests.ManifestError:  # removed meanwhile (pim images rm): nothing to push
                continue
            except Exception as e:  # noqa: BLE001 - a file gone under the upload, say: never the build's failure
                self._drop(f"remote cache {remote}: the push failed ({e!r}); the build is kept here")
                continue
            self._pushed += [k for k in report.pushed if k not in self._pushed]
            self._held_back.update(report.held_back)
            self._bytes += report.bytes
            self._resumed += report.resumed

    def _drop(self, message: str) -> None:
        self.events.warning(None, message)
        self.remote = None
