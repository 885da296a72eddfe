"""The boot stage: the installed system booted once, up to SSH and the guest agent,
and its machine state saved. Provisioning resumes that running guest in seconds
instead of booting it again, so a script change replays only the provisioning.

The snapshot is an accelerator, not an input: it never changes the image's bytes,
and if it cannot be made or restored the build boots the guest instead.
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
from pathlib import Path

from pim.engine.guest.console import ConsoleWatcher
from pim.engine.errors import PimError, VMError
from pim.engine.pipeline.context import Job, free_port
from pim.engine.pipeline.keys import boot_inputs, digest
from pim.engine.qemu import img
from pim.engine.qemu.machine import Machine
from pim.engine.guest.ssh import KeyPair, Session
from pim.engine.store.objects import Store

STAGE = "boot"
STATE = "state"  # the saved machine state inside a boot object


def ensure_booted(job: Job, store: Store, install_dir: Path, key: KeyPair) -> Path | None:
    """The boot object for this install (made now if missing), or None to boot normally."""
    boot_key = digest(boot_inputs(job.spec, job.keys["install"], job.accel, img.qemu_version(job.spec.arch.value)))
    events = job.events
    with store.lock(boot_key):
        cached = store.has(boot_key)
        events.emit("stage-begin", STAGE, key=boot_key, cached=cached)
        if not cached:
            staging = job.work / "boot-out"
            staging.mkdir()
            started = time.monotonic()
            try:
                _snapshot(job, install_dir, staging, key)
            except PimError as e:
                events.warning(STAGE, f"no booted snapshot ({e}); provisioning boots the guest instead")
                shutil.rmtree(staging, ignore_errors=True)
                events.emit("stage-end", STAGE, "skipped", key=boot_key, cached=False)
                return None
            (staging / "stage.json").write_text(
                json.dumps({"stage": "boot", "image": job.name, "key": boot_key, "install": job.keys["install"]})
            )
            state_size = (staging / STATE).stat().st_size
            events.log(STAGE, f"saved the booted guest ({state_size >> 20} MiB) in {time.monotonic() - started:.0f}s")
            store.publish(staging, boot_key)
        events.emit("stage-end", STAGE, key=boot_key, cached=cached)
        return store.object(boot_key)


def _snapshot(job: Job, install_dir: Path, staging: Path, key: KeyPair) -> None:
    spec, events = job.spec, job.events
    disk = staging / "disk.qcow2"
    img.create(disk, spec.disk_size, backing=install_dir / "disk.qcow2")
    if (install_dir / "efivars.fd").exists():
        shutil.copyfile(install_dir / "efivars.fd", staging / "efivars.fd")
    port = free_port()
    vm_cfg = job.vm_config(STAGE, disk, ssh_forward=port)
    password = spec.ssh.password.get_secret_value() if spec.ssh.password else None
    with Machine(vm_cfg, events, STAGE) as vm, ConsoleWatcher(vm_cfg.serial_log, events, STAGE):
        session = Session(port, spec.ssh.user, key, password, events, STAGE)
        try:
            waited = session.wait(spec.ssh.timeout, alive=lambda: vm.running)
        finally:
            session.close()
        events.log(STAGE, f"SSH is up after {waited:.0f}s")
        vm.agent(timeout=120).ping()
        mon = vm.qmp(timeout=30)
        try:
            mon.cmd("stop")
            mon.cmd("migrate", uri=f"exec:cat > {shlex.quote(str(staging / STATE))}")
            deadline = time.monotonic() + 300
            while True:
                status = mon.cmd("query-migrate")
                if status.get("status") == "completed":
                    break
                if status.get("status") in ("failed", "cancelled"):
                    raise VMError(f"saving the machine state failed: {status.get('error-desc', status['status'])}")
                if time.monotonic() > deadline:
                    raise VMError("saving the machine state took more than 300s")
                time.sleep(0.2)
            mon.quit()
        finally:
            mon.close()
        if not vm.wait(30):
            raise VMError("QEMU did not exit after saving the machine state")


def wait_resumed(vm: Machine, timeout: float = 120.0) -> float:
    """Wait for the saved state to load, then run the guest (it was saved paused)."""
    started = time.monotonic()
    while True:
        status = vm.qmp_call("query-status")["status"]  # type: ignore[index]
        if status == "paused":
            vm.qmp_call("cont")
            return time.monotonic() - started
        if status == "running":
            return time.monotonic() - started
        if status not in ("inmigrate", "prelaunch"):
            raise VMError(f"resuming the saved guest failed (QEMU state {status!r})")
        if time.monotonic() - started > timeout or not vm.running:
            raise VMError(f"the saved guest did not load within {timeout:.0f}s")
        time.sleep(0.1)


def resume_uri(boot_dir: Path) -> str | None:
    state = boot_dir / STATE
    return f"exec:cat {shlex.quote(str(state))}" if state.exists() else None
