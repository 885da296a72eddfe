"""Ctrl-C during `terraform apply` of a pim_image: Terraform asks the provider to stop
(StopProvider), the build stops at once, QEMU is gone, nothing is published and the
state holds no image."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from pim.engine.pipeline.build import content_keys
from pim.engine.config.spec import load_config
from pim.engine.store.objects import Store
from tests.e2e.conftest import make_config
from tests.tofu.tf import TERRAFORM, Terraform, needs_terraform

pytestmark = [pytest.mark.e2e, needs_terraform]

MAIN_TF = """terraform {
  required_providers {
    pim = { source = "pim.invalid/pim/pim" }
  }
}
resource "pim_image" "slow" {
  config = "pim/pim.yaml"
  image  = "e2e"
}
"""


def test_ctrl_c_stops_the_build_and_leaves_nothing(fixture_iso: Path, pim_cache: Path, runtime_root: Path,
                                                   tmp_path: Path) -> None:
    step = {"type": "shell", "name": "slow", "inline": f"echo {tmp_path.name}; sleep 900"}
    config = make_config(tmp_path / "pim", fixture_iso, provision=[step])
    (tmp_path / "main.tf").write_text(MAIN_TF)
    tf = Terraform(tmp_path, tmp_path / "sandbox", {"PIM_CACHE_DIR": str(pim_cache),
                                                    "XDG_RUNTIME_DIR": str(runtime_root)})
    final = content_keys(load_config(config), "e2e", Store(pim_cache))["final"]
    proc = subprocess.Popen([str(TERRAFORM), "apply", "-auto-approve", "-no-color"], cwd=tmp_path, env=tf.env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pid_file = runtime_root / "pim" / "e2e.pid"
    try:
        deadline = time.monotonic() + 900
        while not pid_file.exists():  # the install stage may come from the cache; any QEMU will do
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "no QEMU started"
            time.sleep(0.5)
        qemu = int(pid_file.read_text())
        time.sleep(3)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C does to terraform
        t0 = time.monotonic()
        out, _ = proc.communicate(timeout=180)
        stopped_in = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, out
    assert "interrupted" in out and "nothing half-done was kept" in out, out
    assert stopped_in < 30, f"the apply took {stopped_in:.0f} s to stop"
    assert not Path(f"/proc/{qemu}").exists() or "qemu" not in Path(f"/proc/{qemu}/comm").read_text()
    assert not pid_file.exists() and not list((runtime_root / "pim").glob("e2e.*"))
    assert not Store(pim_cache).has(final)
    listed = tf("state", "list", ok=(0, 1)).stdout
    assert "pim_image.slow" not in listed
