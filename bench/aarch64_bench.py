"""An arm64 build under TCG against the x86_64 build, in the same run, stage by stage.

Both build their fixture installer ISO (tests/fixtures/installer) from an empty PIM
cache with the e2e answer file, one shell step, 2 CPUs, 2 GiB and a 4 GiB disk, with
the accelerator PIM picks (TCG for arm64 on an x86_64 host; on this machine TCG for
both). The x86_64 install writes a prebuilt, configured system; the arm64 install
writes a bootstrapped one and configures its packages in the guest (debootstrap's
second stage), so its install stage does more work as well as running emulated.

    cd bench && ../.venv/bin/python aarch64_bench.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import fixture_iso, make_config, pim, timed

from tests.e2e.conftest import DIRECT_BOOT, DIRECT_BOOT_AARCH64  # noqa: E402

STEP = "uname -m > /root/bench-arch && sync"
BOOT = {"x86_64": DIRECT_BOOT, "aarch64": DIRECT_BOOT_AARCH64}
STAGES = ("install", "boot", "provision", "final")


def build(folder: Path, arch: str) -> tuple[float, dict]:
    """Wall seconds of `pim build` and the manifest of what it built."""
    iso = fixture_iso(arch)
    cfg = make_config(folder / arch, iso, name=arch, arch=arch, boot=BOOT[arch], memory="2G",
                      installer_timeout="40m", provision=[{"type": "shell", "name": "step", "inline": STEP}])
    env = {"PIM_CACHE_DIR": str(folder / f"{arch}-cache"), "XDG_RUNTIME_DIR": str(folder / f"{arch}-run")}
    (folder / f"{arch}-run").mkdir(mode=0o700)
    try:
        wall, out = timed(lambda: pim("build", arch, "-c", str(cfg), "--json", env=env))
    except subprocess.CalledProcessError as e:
        sys.exit(f"pim build {arch} failed (exit {e.returncode}):\n" + "\n".join(e.stderr.splitlines()[-30:]))
    done = json.loads(out.stdout.splitlines()[-1])
    return wall, json.loads(Path(done["data"]["manifest"]).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="build in DIR and keep it")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="pim-aarch64-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        for arch in BOOT:  # ISOs first, so that their build is not in the figures
            fixture_iso(arch)
        results = {arch: build(folder, arch) for arch in BOOT}
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    (x_wall, x), (a_wall, a) = results["x86_64"], results["aarch64"]
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    print(f"{'':34} {'x86_64':>9} {'aarch64':>9} {'ratio':>7}")
    for stage in STAGES:
        xs, as_ = x["stages"][stage]["seconds"], a["stages"][stage]["seconds"]
        print(f"  {stage:32} {xs:8.1f}s {as_:8.1f}s {as_ / xs:6.2f}x")
    print(f"  {'pim build (wall)':32} {x_wall:8.1f}s {a_wall:8.1f}s {a_wall / x_wall:6.2f}x")
    print(f"accel setting: x86_64 {x['inputs'].get('accel', '?')}, aarch64 {a['inputs'].get('accel', '?')} "
          "(the verdict is in each build's events: `accelerator: ...`)")


if __name__ == "__main__":
    main()
