"""A whole arm64 build under TCG on this x86_64 host: the arm64 fixture installer
(bootstrapped on the host without binfmt; debootstrap's second stage runs in the
guest), the boot snapshot, provisioning, generalization and the final stage, then
the artifact booted again on fresh UEFI variables, as a clone would be.

The install configures every package of the system under emulation (about 18 minutes
here), so this module runs under the `acceptance` marker (`make acceptance`);
`bench/aarch64_bench.py` times it against the x86_64 fixture build, stage by stage.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pim.engine.config.spec import load_config
from pim.engine.events import Emitter, Event
from pim.engine.pipeline.build import build
from pim.engine.qemu import firmware
from pim.engine.qemu.argv import RuntimeFiles, VmConfig
from pim.engine.qemu.machine import Machine
from pim.engine.store.objects import Store
from tests.e2e.conftest import DIRECT_BOOT_AARCH64, make_config

pytestmark = [pytest.mark.e2e, pytest.mark.acceptance]

NAME = "arm64"
# What the guest says about itself while it is being provisioned (read back on the second boot).
MARK = """set -e
uname -m > /root/pim-arch
test -d /sys/firmware/efi && echo uefi > /root/pim-firmware
dpkg --print-architecture > /root/pim-dpkg-arch
echo provisioned > /root/pim-provisioned
"""


@pytest.fixture(scope="module")
def built(fixture_iso_aarch64: Path, tmp_path_factory: pytest.TempPathFactory, pim_cache: Path,
          module_pim_env: None):
    cfg = load_config(make_config(tmp_path_factory.mktemp("e2e-arm64"), fixture_iso_aarch64, name=NAME,
                                  arch="aarch64", boot=DIRECT_BOOT_AARCH64, memory="2G",
                                  provision=[{"type": "shell", "name": "mark", "inline": MARK}],
                                  installer_timeout="40m"))
    events: list[Event] = []
    result = build(cfg, NAME, Emitter(events.append), store=Store(pim_cache))
    return result, events


def test_arm64_build_ran_every_stage(built) -> None:
    result, events = built
    manifest = result.manifest()
    assert result.path.is_file() and not result.cached
    assert (manifest.arch, manifest.firmware) == ("aarch64", "uefi")
    assert set(manifest.stages) == {"install", "boot", "provision", "final"}
    assert manifest.stages["install"]["answer_fetched"] is True
    assert [s["step"] for s in manifest.stages["provision"]["steps"]] == ["mark"]
    # The installer configured the target's packages in the guest: its own progress lines.
    logs = [e.message for e in events if e.kind == "log" and e.stage == "install"]
    assert any("debootstrap --second-stage" in m for m in logs), logs[-20:]
    assert any("Base system installed successfully" in m for m in logs), logs[-20:]


def test_artifact_boots_as_arm64_under_uefi_and_kept_the_provisioning(built, tmp_path: Path) -> None:
    result, _ = built
    disk = tmp_path / "clone.qcow2"
    shutil.copyfile(result.path, disk)
    vm_cfg = VmConfig(name="arm64-check", disk=disk, serial_log=tmp_path / "serial.log", arch="aarch64",
                      runtime=RuntimeFiles.for_name("arm64-check"), memory_mib=1024,
                      firmware=firmware.for_vm("aarch64", tmp_path / "efivars.fd"))  # fresh variables
    with Machine(vm_cfg, Emitter(), "check") as vm:
        agent = vm.agent(timeout=600)
        assert agent.file_read("/root/pim-provisioned") == b"provisioned\n"
        assert agent.file_read("/root/pim-arch") == b"aarch64\n"
        assert agent.file_read("/root/pim-firmware") == b"uefi\n"
        assert agent.file_read("/root/pim-dpkg-arch") == b"arm64\n"
        code, out, _ = agent.exec(["/usr/bin/uname", "-m"])  # this boot too, not only the build's
        assert (code, out) == (0, b"aarch64\n")
        code, _, _ = agent.exec(["/usr/bin/test", "-d", "/sys/firmware/efi"])
        assert code == 0
        code, out, _ = agent.exec(["/usr/bin/dpkg-query", "-W", "-f", "${db:Status-Abbrev}|", "cloud-init",
                                   "openssh-server", "qemu-guest-agent"])
        assert (code, out) == (0, b"ii |ii |ii |"), out  # every package configured, none half-installed
        keys = agent.file_read("/root/.ssh/authorized_keys").decode()
        assert "pim-build-" not in keys, "the build key must be removed"
        assert vm.stop(graceful=300) in ("guest agent shutdown", "ACPI powerdown")  # not killed
