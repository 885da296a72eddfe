"""The boot stage: the installed system booted once, up to SSH and the guest agent,
and its machine state saved. Provisioning resumes that running guest in seconds
instead of booting it again, so a script change replays only the provisioning.

The snapshot is an accelerator, not an input: it never changes the image's bytes,
and if it cannot be made the build boots the guest instead (`stages.BootStage`).
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from pim.engine.guest.console import ConsoleWatcher
from pim.engine.errors import VMError
from pim.engine.pipeline.context import BuildContext, free_port
from pim.engine.qemu import img
from pim.engine.qemu.machine import Machine
from pim.engine.timeline import Timeline
from pim.engine.wait import until
from pim.engine.guest.ssh import KeyPair, Session
from pim.engine.pipeline.stage import copy_efivars

STAGE = "boot"
STATE = "state"  # the saved machine state inside a boot object


def snapshot(ctx: BuildContext, install_dir: Path, staging: Path, key: KeyPair) -> dict[str, object]:
    """Boot the installed disk (an overlay in `staging`) up to SSH and the guest
    agent, then save the paused machine's state to `staging/state`.

    Returns facts for the manifest (seconds to SSH, state size in bytes). Raises
    PimError (VMError, ProvisionError) when the guest does not come up or the
    state cannot be saved; the caller then boots the guest normally instead.
    """
    spec, events = ctx.spec, ctx.events
    started = time.monotonic()
    timeline = Timeline(events, STAGE)
    disk = staging / "disk.qcow2"
    img.create(disk, spec.disk_size, backing=install_dir / "disk.qcow2")
    copy_efivars(install_dir, staging)
    timeline.mark("overlay")
    port = free_port()
    vm_cfg = ctx.vm_config(STAGE, disk, ssh_forward=port)
    password = ctx.password
    with Machine(vm_cfg, events, STAGE) as vm, ConsoleWatcher(vm_cfg.serial_log, events, STAGE) as console:
        timeline.mark("QEMU start")
        session = Session(port, spec.ssh.user, key, password, events, STAGE)
        try:
            waited = session.wait(spec.ssh.timeout, alive=lambda: vm.running)
        finally:
            session.close()
        timeline.boot(console.seen_at, session.banner_at or time.monotonic())
        timeline.mark("SSH login")
        events.log(STAGE, f"SSH is up after {waited:.0f}s")
        vm.agent(timeout=120).ping()
        timeline.mark("guest agent")
        mon = vm.qmp(timeout=30)
        try:
            mon.cmd("stop")
            mon.cmd("migrate", uri=f"exec:cat > {shlex.quote(str(staging / STATE))}")
            until(lambda: _migrated(mon.cmd("query-migrate")), what="saving the machine state", timeout=300,
                  interval=0.05)
            timeline.mark("save state")
            mon.quit()
        finally:
            mon.close()
        if not vm.wait(30):
            raise VMError("QEMU did not exit after saving the machine state")
        timeline.mark("QEMU exit")
    state_size = (staging / STATE).stat().st_size
    events.log(STAGE, f"saved the booted guest ({state_size >> 20} MiB) in {time.monotonic() - started:.0f}s")
    return {"ssh_wait_seconds": round(waited, 1), "state_bytes": state_size, "phases": timeline.facts()}


def _migrated(status: dict) -> bool:  # type: ignore[type-arg]
    if status.get("status") in ("failed", "cancelled"):
        raise VMError(f"saving the machine state failed: {status.get('error-desc', status['status'])}")
    return status.get("status") == "completed"


def wait_resumed(vm: Machine, timeout: float = 120.0) -> float:
    """Wait for the saved state to load, then run the guest (it was saved paused).

    Returns the seconds it took. Raises VMError when QEMU reports another state,
    WaitTimeout after `timeout` seconds, WaitAborted when QEMU exits meanwhile.
    """
    started = time.monotonic()

    def loaded() -> bool:
        status = vm.qmp_call("query-status")["status"]  # type: ignore[index]
        if status not in ("inmigrate", "prelaunch", "paused", "running"):
            raise VMError(f"resuming the saved guest failed (QEMU state {status!r})")
        if status == "paused":
            vm.qmp_call("cont")
        return status in ("paused", "running")

    until(loaded, what="the saved guest to load", timeout=timeout, alive=lambda: vm.running)
    return time.monotonic() - started


def resume_uri(boot_dir: Path) -> str | None:
    state = boot_dir / STATE
    return f"exec:cat {shlex.quote(str(state))}" if state.exists() else None
