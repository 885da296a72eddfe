"""The QEMU process owner against a real QEMU (an empty disk: firmware only, no OS)."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pim.engine.errors import VMError
from pim.engine.events import Emitter, Event
from pim.engine.qemu import img
from pim.engine.qemu.argv import RuntimeFiles, VmConfig
from pim.engine.qemu.machine import Machine, pid_alive, stop_by_name

pytestmark = pytest.mark.skipif(not Path("/usr/bin/qemu-system-x86_64").exists(),
                                reason="qemu-system-x86 is not installed: run `make test`, which installs it")


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    (tmp_path / "xdg").mkdir()
    return tmp_path / "xdg" / "pim"


def _cfg(tmp_path: Path, name: str = "probe-vm") -> VmConfig:
    disk = tmp_path / f"{name}.qcow2"
    img.create(disk, 64 << 20)
    return VmConfig(name=name, disk=disk, serial_log=tmp_path / f"{name}.serial.log",
                    runtime=RuntimeFiles.for_name(name), memory_mib=128, cpus=1)


def test_lifetime_runtime_files_and_ladder(tmp_path: Path, runtime: Path) -> None:
    seen: list[Event] = []
    cfg = _cfg(tmp_path)
    with Machine(cfg, Emitter(seen.append), "test") as vm:
        names = sorted(p.name for p in runtime.iterdir() if not p.name.startswith("accel"))
        assert names == ["probe-vm.ga", "probe-vm.pid", "probe-vm.qmp", "probe-vm.serial"]
        assert int((runtime / "probe-vm.pid").read_text()) == vm.proc.pid
        assert vm.qmp_call("query-status")["status"] == "running"
        assert os.getsid(vm.proc.pid) == vm.proc.pid  # detached: its own session
        with pytest.raises(VMError, match="already running"):
            Machine(cfg, Emitter(), "dup").__enter__()
        # No OS answers ACPI, so the ladder must climb to QMP quit.
        how = vm.stop(graceful=1.0)
        assert how == "QMP quit"
        pid = vm.proc.pid
    assert not pid_alive(pid)
    assert [p for p in runtime.iterdir() if p.name.startswith("probe-vm")] == []
    assert any("did not power off" in e.message for e in seen)


def test_interrupt_inside_the_context_still_cleans_up(tmp_path: Path, runtime: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        with Machine(_cfg(tmp_path), Emitter(), "test") as vm:
            pid = vm.proc.pid
            raise KeyboardInterrupt
    assert not pid_alive(pid)
    assert [p for p in runtime.iterdir() if p.name.startswith("probe-vm")] == []


def test_qemu_dies_when_its_owner_is_killed(tmp_path: Path, runtime: Path) -> None:
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from pim.engine.events import Emitter
        from pim.engine.qemu import img
        from pim.engine.qemu.argv import RuntimeFiles, VmConfig
        from pim.engine.qemu.machine import Machine
        disk = Path({str(tmp_path)!r}) / "orphan.qcow2"
        img.create(disk, 64 << 20)
        cfg = VmConfig(name="orphan", disk=disk, serial_log=disk.with_suffix(".log"),
                       runtime=RuntimeFiles.for_name("orphan"), memory_mib=128, cpus=1)
        with Machine(cfg, Emitter()) as vm:
            print(vm.proc.pid, flush=True)
            time.sleep(600)
    """)
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=os.environ.copy())
    qemu_pid = int(owner.stdout.readline())
    assert pid_alive(qemu_pid)
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    deadline = time.monotonic() + 10
    while pid_alive(qemu_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(qemu_pid)


def test_stop_by_name_from_another_process(tmp_path: Path, runtime: Path) -> None:
    with Machine(_cfg(tmp_path, "other"), Emitter(), "test") as vm:
        how = stop_by_name("other", Emitter(), graceful=1.0)
        assert how in ("QMP quit", "SIGTERM")
        assert vm.wait(5)
    with pytest.raises(VMError, match="no running VM"):
        stop_by_name("other", Emitter())


def test_launch_failure_carries_qemu_output(tmp_path: Path, runtime: Path) -> None:
    cfg = _cfg(tmp_path, "broken")
    bad = VmConfig(**{**cfg.__dict__, "extra": ("-device", "no-such-device")})
    with pytest.raises(VMError) as e:
        with Machine(bad, Emitter()):
            pass
    assert "exited at start" in str(e.value) and "no-such-device" in str(e.value)
    assert [p for p in runtime.iterdir() if p.name.startswith("broken")] == []
