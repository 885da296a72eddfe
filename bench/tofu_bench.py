"""`terraform plan` with no changes on a cached image, and the external helper's lookup.

Both run on every plan of a configuration that uses PIM, so both must be fast:
targets: plan < 1.5 s (median), `pim tofu external` lookup < 1 s (Python start-up
included). Baselines measured in the same run: `terraform plan` of a configuration
with no provider at all (Terraform's own cost), and a bare `python -c pass` (the
interpreter's start-up).

The image is the fixture ISO's, built once into a cache kept between runs
($PIM_BENCH_CACHE, default ~/.cache/pim-bench): the first run builds it (minutes
under TCG), later runs only measure.

    cd bench && ../.venv/bin/python tofu_bench.py [-n 15]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import fixture_iso, make_config, pim  # noqa: F401  (common puts the repo on sys.path)

from tests.tofu.tf import TERRAFORM, Terraform  # noqa: E402

PIM_TF = """terraform {
  required_providers {
    pim = { source = "pim.invalid/pim/pim" }
  }
}
resource "pim_image" "bench" {
  config = "pim.yaml"
  image  = "e2e"
}
"""
BARE_TF = 'locals {\n  nothing = "here"\n}\noutput "nothing" {\n  value = local.nothing\n}\n'


def times(n: int, fn) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def summary(label: str, samples: list[float], base: list[float] | None = None) -> str:
    med = statistics.median(samples)
    p95 = sorted(samples)[int(0.95 * (len(samples) - 1))]
    ratio = f"   {med / statistics.median(base):5.2f}x baseline" if base else ""
    return f"{label:44} median {med * 1000:7.1f} ms   p95 {p95 * 1000:7.1f} ms{ratio}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=15, help="runs of each measurement")
    args = parser.parse_args()
    if TERRAFORM is None:
        sys.exit("terraform is not on PATH: this benchmark drives the real binary")
    cache = Path(os.environ.get("PIM_BENCH_CACHE", Path.home() / ".cache/pim-bench"))
    env = {"PIM_CACHE_DIR": str(cache)}
    with tempfile.TemporaryDirectory(prefix="pim-tofu-bench-") as tmp:
        work, bare = Path(tmp) / "work", Path(tmp) / "bare"
        config = make_config(work, fixture_iso())
        t0 = time.perf_counter()
        pim("build", "e2e", "--config", str(config), env=env)
        print(f"image ready in {time.perf_counter() - t0:.1f} s (0 s when cached from an earlier run)",
              file=sys.stderr)
        (work / "main.tf").write_text(PIM_TF)
        tf = Terraform(work, Path(tmp) / "sandbox", env)
        tf("apply", "-auto-approve")  # a cache hit: records the image in the state
        bare.mkdir()
        (bare / "main.tf").write_text(BARE_TF)
        tf_bare = Terraform(bare, Path(tmp) / "sandbox", env)
        tf_bare("apply", "-auto-approve")

        base_plan = times(args.n, lambda: tf_bare("plan", "-detailed-exitcode", ok=(0,)))
        pim_plan = times(args.n, lambda: tf("plan", "-detailed-exitcode", ok=(0,)))
        exe = Path(sys.executable).with_name("pim")
        query = json.dumps({"config": str(config), "image": "e2e"})

        def lookup() -> None:
            proc = subprocess.run([str(exe), "tofu", "external"], input=query, capture_output=True, text=True,
                                  env={**os.environ, **env}, check=True)
            assert json.loads(proc.stdout)["image"] == "e2e"

        python = times(args.n, lambda: subprocess.run([sys.executable, "-c", "pass"], check=True))
        helper = times(args.n, lookup)
    print(f"{args.n} runs each; image key from {config.name} in {cache}")
    print(summary("terraform plan, no provider (baseline)", base_plan))
    print(summary("terraform plan, pim_image unchanged", pim_plan, base_plan) + "   target < 1500 ms")
    print(summary("python -c pass (baseline)", python))
    print(summary("pim tofu external, mode=lookup", helper, python) + "   target < 1000 ms")


if __name__ == "__main__":
    main()
