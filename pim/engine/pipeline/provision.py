"""The provision stage: boot the installed disk through an overlay, run the steps
over SSH, then generalize the guest (cloud-init, machine-id, host keys, build key, trim)."""

from __future__ import annotations

import time
from pathlib import Path

from pim.engine.guest.console import ConsoleWatcher
from pim.engine.pipeline.boot import resume_uri, wait_resumed
from pim.engine.errors import ProvisionError, ResumeFailed, VMError, WaitAborted, WaitTimeout
from pim.engine.pipeline.context import BuildContext, free_port
from pim.engine.qemu import img
from pim.engine.qemu.machine import Machine
from pim.engine.config.spec import FileStep, ShellStep
from pim.engine.guest.ssh import KeyPair, Session, script_command
from pim.engine.pipeline.guestfiles import GENERALIZE, STEP_PRELUDE
from pim.engine.pipeline.stage import copy_efivars

STAGE = "provision"
PACKAGE_QUERY = "/tmp/pim-packages"
PACKAGE_LIST = "/run/pim-packages.tsv"  # written by the generalize script (guestfiles.GENERALIZE)



def run_provision(ctx: BuildContext, base: Path, disk: Path, key: KeyPair) -> dict[str, object]:
    """Provision on `disk`, a new qcow2 overlay of `base`/disk.qcow2 (`base` is the
    boot snapshot's or the install stage's object folder), resuming base's saved
    machine state when it has one; then generalize and shut the guest down.

    Returns facts for the manifest (seconds, per-step seconds, how QEMU stopped).
    Raises ProvisionError for a failed step (name, exit status, output tail),
    ResumeFailed when base's saved state does not load, VMError when the guest
    cannot be started.
    """
    spec, events = ctx.spec, ctx.events
    img.create(disk, spec.disk_size, backing=base / "disk.qcow2")
    copy_efivars(base, disk.parent)
    port = free_port()
    incoming = resume_uri(base)
    vm_cfg = ctx.vm_config(STAGE, disk, ssh_forward=port, incoming=incoming)
    password = ctx.password
    facts: dict[str, object] = {}
    started = time.monotonic()
    with ctx.package_cache() as proxy, Machine(vm_cfg, events, STAGE) as vm, ConsoleWatcher(
        vm_cfg.serial_log, events, STAGE
    ):
        session = Session(port, spec.ssh.user, key, password, events, STAGE)
        try:
            if incoming:
                try:
                    loaded = wait_resumed(vm)
                except (VMError, WaitTimeout, WaitAborted) as e:
                    raise ResumeFailed(f"the boot snapshot did not load ({e})") from e
                events.log(STAGE, f"resumed the booted guest in {loaded:.1f}s")
                _sync_clock(vm)
            waited = session.wait(spec.ssh.timeout, alive=lambda: vm.running)
            events.log(STAGE, f"SSH is up after {waited:.0f}s" + (" (resumed)" if incoming else ""))
            facts["ssh_wait_seconds"] = round(waited, 1)
            steps = []
            for index, step in enumerate(spec.provision, 1):
                t0 = time.monotonic()
                _run_step(ctx, session, index, step, {"PIM_PROXY_URL": proxy.url()}, alive=lambda: vm.running)
                steps.append({"step": step.label, "seconds": round(time.monotonic() - t0, 1)})
            facts["steps"] = steps
            comment = key.public_openssh.rsplit(" ", 1)[-1]
            env = {
                "PIM_PACKAGES": _upload_query(session),
                "PIM_CLOUD_INIT": "1" if spec.finalize.cloud_init else "0",
                "PIM_TRIM": "1" if spec.finalize.trim else "0",
                "PIM_KEY_COMMENT": comment,
            }
            session.upload(GENERALIZE.encode(), "/tmp/pim-generalize", 0o700)
            session.run("generalize", script_command("/tmp/pim-generalize", env))
            facts["packages"] = _read_packages(ctx, session, disk.parent)
        finally:
            session.close()
        facts["shutdown"] = vm.stop(graceful=120.0)
    facts["seconds"] = round(time.monotonic() - started, 1)
    return facts


def _upload_query(session: Session) -> str:
    """Put the package query where the generalize script runs it; its guest path."""
    from pim.engine.provenance import packages

    session.upload(packages.QUERY.encode(), PACKAGE_QUERY, 0o700)
    return PACKAGE_QUERY


def _read_packages(ctx: BuildContext, session: Session, folder: Path) -> int:
    """Read the package list the generalize script wrote into `folder/packages.json`
    (for the SBOM) and remove it from the guest; the number of packages, 0 with a
    warning when there is none (neither dpkg nor rpm) or it cannot be read: the SBOM
    is missing then, the build goes on."""
    import paramiko

    from pim.engine.provenance import packages

    try:
        found = packages.parse(session.capture("packages", f"cat {PACKAGE_LIST}; rc=$?; rm -f {PACKAGE_LIST}; exit $rc"))
    except (ProvisionError, OSError, paramiko.SSHException) as e:  # OSError covers socket timeouts
        ctx.events.warning(STAGE, f"no package list for the SBOM: {e}")
        return 0
    found.write(folder)
    ctx.events.log(STAGE, f"{len(found.packages)} {found.manager} packages installed ({found.os_id} {found.os_version})")
    return len(found.packages)


def _sync_clock(vm: Machine) -> None:
    """A resumed guest's clock stands where it was saved; set it to now."""
    try:
        vm.agent(timeout=60).call("guest-set-time", time=time.time_ns())
    except VMError as e:
        vm.events.warning(STAGE, f"could not set the resumed guest's clock: {e}")


def _run_step(ctx: BuildContext, session: Session, index: int, step: ShellStep | FileStep,  # type: ignore[no-untyped-def]
              base_env: dict[str, str], alive) -> None:
    events = ctx.events
    label = f"{index}:{step.label}"
    if isinstance(step, FileStep):
        events.log(STAGE, f"step {label}")
        session.upload(ctx.cfg.path(step.source).read_bytes(), step.destination, int(step.mode, 8))
        return
    body = step.inline if step.inline is not None else ctx.cfg.path(step.script).read_text()  # type: ignore[arg-type]
    if not body.startswith("#!"):
        body = STEP_PRELUDE + body
    path = f"/tmp/pim-step-{index}"
    events.log(STAGE, f"step {label}")
    session.upload(body.encode(), path, 0o700)
    status, tail = session.run(label, script_command(path, {**base_env, **ctx.spec.env, **step.env}), check=False)
    if step.expect_disconnect:
        # The step reboots the guest: whatever its exit status, reconnect once the
        # guest is back, so the next step never runs on a guest going down.
        if status not in (0, -1):
            raise ProvisionError(f"step {label} failed with exit status {status}", tail)
        session.close()
        events.log(STAGE, f"step {label} done; waiting for the guest to come back")
        time.sleep(10.0)
        session.wait(ctx.spec.ssh.timeout, alive)
        return
    if status == -1 or not session.connected:
        raise ProvisionError(
            f"step {label}: the SSH connection dropped (set expect_disconnect: true if the step reboots the guest)",
            tail,
        )
    if status != 0:
        raise ProvisionError(f"step {label} failed with exit status {status}", tail)
