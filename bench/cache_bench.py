"""Stage-cache benchmark on the fixture ISO: cold build, no-op build, script-only
change, and a guest downloading real Debian packages through PIM's package proxy
cold and warm. Every figure is printed with its ratio to the cold build measured
in the same run. Targets: no-op < 0.3 s; script-only change < 12 % of cold."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import fixture_iso, make_config, median_of, pim, timed

PACKAGES = ["hello", "sl", "cowsay", "figlet", "bc", "tree", "jq", "less"]

DOWNLOAD = r"""
python3 - <<'PY'
import os, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": os.environ["PIM_PROXY_URL"]}))
total = 0
for url in os.environ["PKG_URLS"].split():
    with opener.open(url, timeout=120) as r:
        total += len(r.read())
print("downloaded", total, "bytes")
PY
"""


def package_urls() -> list[str]:
    out = subprocess.run(["apt-get", "download", "--print-uris", *PACKAGES], capture_output=True, text=True)
    return [line.split()[0].strip("'") for line in out.stdout.splitlines() if line.strip()]


def step_seconds(manifest_path: str, name: str) -> float:
    manifest = json.loads(Path(manifest_path).read_text())
    return next(s["seconds"] for s in manifest["stages"]["provision"]["steps"] if s["step"] == name)


def main() -> None:
    iso = fixture_iso()
    urls = package_urls()
    with tempfile.TemporaryDirectory(prefix="pim-bench-") as tmp:
        env = {"PIM_CACHE_DIR": f"{tmp}/cache"}
        folder = Path(tmp) / "cfg"

        def config(script: str) -> str:
            steps = [{"type": "shell", "name": "script", "inline": script}]
            return str(make_config(folder, iso, provision=steps))

        cfg = config("echo v1 > /root/version")
        cold, _ = timed(lambda: pim("build", "e2e", "-c", cfg, env=env))
        noop = median_of(5, lambda: pim("build", "e2e", "-c", cfg, env=env))
        cfg = config("echo v2 > /root/version")
        change, _ = timed(lambda: pim("build", "e2e", "-c", cfg, env=env))

        dl_env = {"PKG_URLS": " ".join(urls)}
        steps = [{"type": "shell", "name": "download", "inline": DOWNLOAD, "env": dl_env}]
        cfg = str(make_config(folder, iso, provision=steps))
        cold_dl = json.loads(pim("build", "e2e", "-c", cfg, "--json", env=env).stdout.splitlines()[-1])
        steps[0]["inline"] = DOWNLOAD + "\n# warm run\n"
        cfg = str(make_config(folder, iso, provision=steps))
        warm_dl = json.loads(pim("build", "e2e", "-c", cfg, "--json", env=env).stdout.splitlines()[-1])
        cold_s = step_seconds(cold_dl["data"]["manifest"], "download")
        warm_s = step_seconds(warm_dl["data"]["manifest"], "download")

    print(f"cold build                 {cold:8.1f} s   1.000")
    print(f"no-op build (median of 5)  {noop:8.2f} s   {noop / cold:.4f}   target < 0.3 s: "
          f"{'ok' if noop < 0.3 else 'MISSED'}")
    print(f"script-only change         {change:8.1f} s   {change / cold:.3f}   target < 0.12: "
          f"{'ok' if change / cold < 0.12 else 'MISSED'}")
    print(f"guest download, proxy cold {cold_s:8.1f} s   {cold_s / cold:.3f}   ({len(urls)} packages)")
    print(f"guest download, proxy warm {warm_s:8.1f} s   {warm_s / cold:.3f}   warm/cold download {warm_s / cold_s:.2f}")


if __name__ == "__main__":
    sys.exit(main())
