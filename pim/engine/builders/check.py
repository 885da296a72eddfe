"""`pim builders check`: each builder asked, in parallel, what it can do right now."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping

import pim
from pim.engine.builders.spec import Builder
from pim.engine.errors import PimError


def check(b: Builder) -> dict[str, Any]:
    """{name, ok, version, accel {arch: verdict}, free_bytes, running, max_jobs, seconds}
    for one builder; `ok` False with `error` (the fix included) when it is not usable."""
    start = time.monotonic()
    out: dict[str, Any] = {"name": b.name, "address": b.address, "max_jobs": b.max_jobs}
    try:
        if b.is_local:
            from pim.engine.builders.agent import info
            from pim.engine.builders.route import Host

            found = info({"max_jobs": b.max_jobs, "probe": True, "archs": list(b.systems) or [Host.this().arch]})
        else:
            from pim.engine.builders.remote import _call
            from pim.engine.builders.ssh import Connection

            with Connection(b) as conn:
                found = _call(conn, "info", {"cache_dir": b.cache_dir, "max_jobs": b.max_jobs, "probe": True,
                                             "archs": list(b.systems)})
        out.update(ok=True, version=found["version"], accel=found.get("accel", {}), free_bytes=found["free_bytes"],
                   running=found["running"], cache_dir=found["cache_dir"],
                   same_version=found["version"] == pim.__version__)
        if found["version"] != pim.__version__:
            out["warning"] = f"runs PIM {found['version']}, this machine {pim.__version__}"
    except PimError as e:
        out.update(ok=False, error=str(e))
    except Exception as e:  # noqa: BLE001 - one builder's odd failure must not hide the others
        out.update(ok=False, error=f"builder {b.name}: {type(e).__name__}: {e}")
    out["seconds"] = round(time.monotonic() - start, 2)
    return out


def check_all(builders: Mapping[str, Builder]) -> list[dict[str, Any]]:
    """`check` of every builder, side by side; in the order given."""
    with ThreadPoolExecutor(max_workers=max(1, len(builders))) as pool:
        return list(pool.map(check, builders.values()))
