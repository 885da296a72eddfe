"""One real build of the fixture installer with `firmware: uefi` (OVMF; TCG here).

The installer's kernel is booted directly under OVMF; the installed disk then boots
through its own EFI system partition (systemd-boot) for the boot snapshot and the
provisioning, which inspects the firmware from inside the guest. Every QEMU of the
build is looked at while it runs: OVMF's code read-only, and a variables store that
is the build's own copy, never the host's template.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pim.engine.qemu import firmware
from pim.engine.pipeline.build import build
from pim.engine.events import Emitter, Event
from pim.engine.config.spec import load_config
from pim.engine.store.objects import Store
from tests.e2e.conftest import make_config

pytestmark = pytest.mark.e2e

NAME = "uefi"
# systemd-boot's vendor GUID for the variables it sets (systemd's Boot Loader Interface).
LOADER_GUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"
INSPECT = f"""set -e
test -d /sys/firmware/efi
echo "platform: $(cat /sys/firmware/efi/fw_platform_size)-bit UEFI"
# efivarfs: 4 bytes of attributes, then UTF-16; its files cannot seek (so cat | tail).
loader_var() {{ cat "/sys/firmware/efi/efivars/$1-{LOADER_GUID}" | tail -c +5 | tr -d '\\000'; }}
echo "loader: $(loader_var LoaderInfo)"
echo "entry: $(loader_var LoaderEntrySelected)"
"""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pflash(cmdline: list[str]) -> dict[str, dict[str, str]]:
    """unit -> options of each `-drive if=pflash,...` on a QEMU command line."""
    drives = [dict(kv.split("=", 1) for kv in arg.split(",")) for arg in cmdline if arg.startswith("if=pflash,")]
    return {d["unit"]: d for d in drives}


class QemuWatcher:
    """An event sink that also reads the build VM's command line while QEMU runs."""

    def __init__(self, pid_file: Path):
        self.pid_file = pid_file
        self.events: list[Event] = []
        self.seen: dict[int, dict] = {}  # QEMU pid -> what it ran with

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        try:
            pid = int(self.pid_file.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except (OSError, ValueError):
            return  # no QEMU running right now
        if pid not in self.seen and cmdline and "qemu-system" in cmdline[0]:
            flash = _pflash(cmdline)
            self.seen[pid] = {"stage": event.stage, "code": flash.get("0", {}), "vars": flash.get("1", {}).get("file"),
                              "vars_existed": Path(flash.get("1", {}).get("file", "/nonexistent")).is_file()}


@pytest.fixture(scope="module")
def ovmf():
    found = firmware.discover()["x86_64"]
    if found is None:
        pytest.fail("no OVMF on this host: run the suite with `make test`, which installs the ovmf package")
    return found


@pytest.fixture(scope="module")
def built(fixture_iso: Path, tmp_path_factory: pytest.TempPathFactory, pim_cache: Path, runtime_root: Path, ovmf,
          module_pim_env: None):
    template_sha = _sha256(ovmf.vars)
    steps = [{"type": "shell", "name": "inspect-firmware", "inline": INSPECT}]
    cfg = load_config(make_config(tmp_path_factory.mktemp("e2e-uefi"), fixture_iso, name=NAME,
                                  provision=steps, firmware="uefi"))
    watcher = QemuWatcher(runtime_root / "pim" / f"{NAME}.pid")
    result = build(cfg, NAME, Emitter(watcher), store=Store(pim_cache))
    return result, watcher, template_sha


def test_uefi_build_published(built) -> None:
    result, watcher, _ = built
    assert result.path.is_file() and not result.cached
    manifest = result.manifest()
    assert manifest.firmware == "uefi"
    assert manifest.stages["install"]["answer_fetched"] is True
    assert [s["step"] for s in manifest.stages["provision"]["steps"]] == ["inspect-firmware"]


def test_every_qemu_ran_ovmf_with_its_own_vars_copy(built, ovmf, pim_cache: Path) -> None:
    _, watcher, template_sha = built
    runs = list(watcher.seen.values())
    assert "install" in [r["stage"] for r in runs], runs  # at least the installer and a boot of the disk
    assert len(runs) >= 2, runs
    for run in runs:
        assert run["code"].get("file") == str(ovmf.code) and run["code"].get("readonly") == "on", run
        vars_copy = Path(run["vars"])
        assert vars_copy.name == "efivars.fd" and vars_copy.is_relative_to(pim_cache), run
        assert run["vars_existed"], run
    assert len({r["vars"] for r in runs}) == len(runs), "each stage must have its own vars copy"
    assert _sha256(ovmf.vars) == template_sha, "the host's OVMF vars template must never be written"


def test_install_stage_keeps_its_firmware_variables(built, ovmf, pim_cache: Path) -> None:
    result, _, template_sha = built
    vars_copy = pim_cache / "objects" / result.manifest().lineage["install"].key / "efivars.fd"
    assert vars_copy.stat().st_size == ovmf.vars.stat().st_size
    # OVMF wrote its variables (boot options) into the build's copy during the install.
    assert _sha256(vars_copy) != template_sha


def test_installed_disk_booted_through_its_efi_system_partition(built) -> None:
    _, watcher, _ = built
    out = [e.message.split("] ", 1)[1] for e in watcher.events
           if e.kind == "log" and e.message.startswith("[1:inspect-firmware] ")]
    assert "platform: 64-bit UEFI" in out, out
    # systemd-boot from the disk's ESP started the loader entry the fixture ships:
    # the guest was not booted by QEMU's -kernel.
    assert any(line.startswith("loader: systemd-boot ") for line in out), out
    assert "entry: debian.conf" in out, out
