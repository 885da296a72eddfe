"""The provision stage: boot the installed disk through an overlay, run the steps
over SSH, then generalize the guest (cloud-init, machine-id, host keys, build key, trim)."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from pim.engine.guest.console import ConsoleWatcher
from pim.engine.pipeline.boot import resume_uri, wait_resumed
from pim.engine.errors import ProvisionError, ResumeFailed, VMError, WaitAborted, WaitTimeout
from pim.engine.pipeline.context import BuildContext, free_port
from pim.engine.qemu import img
from pim.engine.qemu.machine import Machine
from pim.engine.config.spec import FileStep, ShellStep
from pim.engine.guest.ssh import WARNING, KeyPair, Session
from pim.engine.pipeline.guestfiles import GENERALIZE, STEP_PRELUDE
from pim.engine.pipeline.stage import copy_efivars
from pim.engine.timeline import Timeline

STAGE = "provision"
PACKAGE_QUERY = "/tmp/pim-packages"
PACKAGE_LIST = "/run/pim-packages.tsv"  # written by the generalize script (guestfiles.GENERALIZE)
CLOCK_NOT_SET = "could not set the resumed guest's clock"



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
    timeline = Timeline(events, STAGE)
    img.create(disk, spec.disk_size, backing=base / "disk.qcow2")
    copy_efivars(base, disk.parent)
    timeline.mark("overlay")
    port = free_port()
    incoming = resume_uri(base)
    vm_cfg = ctx.vm_config(STAGE, disk, ssh_forward=port, incoming=incoming)
    password = ctx.password
    facts: dict[str, object] = {}
    started = time.monotonic()
    with ctx.package_cache() as proxy, Machine(vm_cfg, events, STAGE) as vm, ConsoleWatcher(
        vm_cfg.serial_log, events, STAGE
    ) as console:
        timeline.mark("QEMU start")
        session = Session(port, spec.ssh.user, key, password, events, STAGE)
        try:
            if incoming:
                try:
                    loaded = wait_resumed(vm)
                except (VMError, WaitTimeout, WaitAborted) as e:
                    raise ResumeFailed(f"the boot snapshot did not load ({e})") from e
                events.log(STAGE, f"resumed the booted guest in {loaded:.1f}s")
                timeline.mark("resume")
            waited = session.wait(spec.ssh.timeout, alive=lambda: vm.running)
            if not incoming:
                timeline.boot(console.seen_at, session.banner_at or time.monotonic())
            timeline.mark("SSH login")
            if incoming:
                _sync_clock(session)
            events.log(STAGE, f"SSH is up after {waited:.0f}s" + (" (resumed)" if incoming else ""))
            facts["ssh_wait_seconds"] = round(waited, 1)
            steps = []
            for index, step in enumerate(spec.provision, 1):
                t0 = time.monotonic()
                _run_step(ctx, session, index, step, {"PIM_PROXY_URL": proxy.url()}, alive=lambda: vm.running)
                steps.append({"step": step.label, "seconds": round(time.monotonic() - t0, 1)})
                timeline.mark(f"step {index}:{step.label}")
            facts["steps"] = steps
            comment = key.public_openssh.rsplit(" ", 1)[-1]
            env = {
                "PIM_PACKAGES": PACKAGE_QUERY,
                "PIM_CLOUD_INIT": "1" if spec.finalize.cloud_init else "0",
                "PIM_TRIM": "1" if spec.finalize.trim else "0",
                "PIM_KEY_COMMENT": comment,
            }
            session.run_script("generalize", "/tmp/pim-generalize", GENERALIZE.encode(), env, before=_write_query())
            timeline.mark("generalize")
            facts["packages"] = _read_packages(ctx, session, disk.parent)
            timeline.mark("package list")
        finally:
            session.close()
        facts["shutdown"] = vm.stop(graceful=120.0)
        timeline.mark("shutdown")
    facts["seconds"] = round(time.monotonic() - started, 1)
    facts["phases"] = timeline.facts()
    return facts


def _write_query() -> str:
    """The command (a prefix ending in `&&`) that writes PIM's package query where the
    generalize script runs it (`PACKAGE_QUERY`), in the generalize command itself."""
    from pim.engine.provenance import packages

    return f"printf '%s' {shlex.quote(packages.QUERY)} > {PACKAGE_QUERY} && "


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


def _sync_clock(session: Session) -> None:
    """A resumed guest's clock stands where it was saved: the next command the session
    runs first sets it to now (`date -s`, GNU and BusyBox alike), so it costs no
    command of its own (about 0.4 s under TCG). The guest agent's guest-set-time would
    also write the RTC with `hwclock -w`, which waits for the RTC's next second. A
    failure is a warning: the build goes on."""
    session.before_next = lambda: (f"date -u -s @{int(time.time())} > /dev/null 2>&1 || "
                                   f"echo {shlex.quote(WARNING + CLOCK_NOT_SET)} >&2; ")


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
    status, tail = session.run_script(label, path, body.encode(), {**base_env, **ctx.spec.env, **step.env},
                                      check=False)
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
