"""Diff of an unchanged pim.Image through the Pulumi SDK's dynamic-provider server.

What `pulumi preview` pays per image when nothing changed: one Diff RPC to
`python -m pulumi.dynamic`, which recomputes the content key from the inputs and
every file they reference (the answer template, scripts, uploads; the ISO's hash is
memoized by its identity) and compares it with the stored one. Nothing is built.
Prints the first call (the provider process imports PIM then; with a cold and with a
memoized ISO hash) and then the median, p95 and max of N calls. Target: well under 1 s.

    cd bench && ../.venv/bin/python pulumi_bench.py [-n 50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, fixture_iso, make_config  # noqa: F401  (ROOT puts the repo on sys.path)

from pim.engine.pipeline.build import content_keys  # noqa: E402
from pim.engine.store.objects import Store  # noqa: E402
from pim.engine.config.spec import load_config  # noqa: E402
from pim.pulumi_provider.image import ImageProvider  # noqa: E402
from tests.pulumi.grpc_client import DynamicServer, provider_env, with_provider  # noqa: E402

STEPS = [{"type": "shell", "script": "setup.sh"}, {"type": "file", "source": "motd", "destination": "/etc/motd"}]


def one_run(folder: Path, iso: Path, cache: Path, n: int) -> dict[str, float]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "setup.sh").write_text("echo provisioning\n" * 50)
    (folder / "motd").write_text("hello\n")
    config = make_config(folder, iso, provision=STEPS, env={"GREETING": "hi"})
    cache.with_name("keys-cache").mkdir(exist_ok=True)
    inputs = {"config": str(config), "image": "e2e", "tags": {}, "delete_artifact": False}
    # the stored key, computed with a cache of its own so the server's first Diff finds the
    # ISO's hash memoized only on the second run
    t0 = time.perf_counter()
    key = content_keys(load_config(config), "e2e", Store(cache.with_name("keys-cache")))["final"]
    in_process = time.perf_counter() - t0
    olds = with_provider({**inputs, "content_key": key}, ImageProvider())
    news = with_provider(inputs, ImageProvider())
    server = DynamicServer(provider_env(PIM_CACHE_DIR=str(cache)), "pulumi-python:dynamic/pim:Image").start()
    try:
        times = []
        for _ in range(n + 1):
            t0 = time.perf_counter()
            diff = server.diff("e2e", key, olds, news)
            times.append(time.perf_counter() - t0)
            assert diff.none, diff
    finally:
        server.stop()
    steady = sorted(times[1:])
    return {"keys_in_process_first": in_process, "first": times[0], "median": statistics.median(steady),
            "p95": steady[int(0.95 * (len(steady) - 1))], "max": steady[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50, help="Diff calls after the first")
    args = parser.parse_args()
    iso = fixture_iso()
    print(f"ISO: {iso.name} ({iso.stat().st_size >> 20} MiB); {args.n} Diff calls after the first", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="pim-pulumi-bench-") as tmp:
        folder, cache = Path(tmp) / "proj", Path(tmp) / "cache"
        for label in ("ISO hash cold", "ISO hash memoized"):
            r = one_run(folder, iso, cache, args.n)
            print(f"{label:18}  first Diff {r['first'] * 1000:7.1f} ms   then median {r['median'] * 1000:6.1f} ms"
                  f"  p95 {r['p95'] * 1000:6.1f} ms  max {r['max'] * 1000:6.1f} ms"
                  f"   (content_keys in-process first: {r['keys_in_process_first'] * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
