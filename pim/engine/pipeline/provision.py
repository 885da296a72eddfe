"""The provision stage: boot the installed disk through an overlay, run the steps
over SSH, then generalize the guest (cloud-init, machine-id, host keys, build key, trim)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from pim.engine.guest.console import ConsoleWatcher
from pim.engine.pipeline.boot import resume_uri, wait_resumed
from pim.engine.errors import ProvisionError, VMError
from pim.engine.pipeline.context import Job, free_port
from pim.engine.qemu import img
from pim.engine.qemu.machine import Machine
from pim.engine.config.spec import FileStep, ShellStep
from pim.engine.guest.ssh import KeyPair, Session, script_command

STAGE = "provision"

# Runs last, as root, over the build key's SSH session. Leaves a generic image:
# identity comes from cloud-init at deploy time.
GENERALIZE = r"""#!/bin/sh
set -eu
say() { echo "pim: $*"; }
if [ "$PIM_CLOUD_INIT" = 1 ]; then
  if ! command -v cloud-init >/dev/null 2>&1; then
    say "installing cloud-init"
    if command -v apt-get >/dev/null 2>&1; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q cloud-init
    elif command -v dnf >/dev/null 2>&1; then dnf install -y cloud-init
    elif command -v yum >/dev/null 2>&1; then yum install -y cloud-init
    elif command -v zypper >/dev/null 2>&1; then zypper -n install cloud-init
    else say "cannot install cloud-init: no apt-get, dnf, yum or zypper"; exit 3
    fi
  fi
  # What `cloud-init clean --logs --seed` does, without starting cloud-init's
  # Python (15 s under emulation): forget every instance, seed and log.
  say "cleaning cloud-init state"
  rm -rf /var/lib/cloud/* /var/log/cloud-init.log /var/log/cloud-init-output.log
fi
if command -v apt-get >/dev/null 2>&1; then apt-get clean; fi
say "emptying machine-id"
: > /etc/machine-id
if [ -f /var/lib/dbus/machine-id ] && [ ! -L /var/lib/dbus/machine-id ]; then rm -f /var/lib/dbus/machine-id; fi
say "removing SSH host keys"
rm -f /etc/ssh/ssh_host_*
say "removing the build key"
for f in /root/.ssh/authorized_keys /home/*/.ssh/authorized_keys; do
  if [ -f "$f" ]; then sed -i "/ $PIM_KEY_COMMENT\$/d" "$f"; fi
done
if command -v journalctl >/dev/null 2>&1; then journalctl --rotate >/dev/null 2>&1 || true; journalctl --vacuum-time=1s >/dev/null 2>&1 || true; fi
rm -f /root/.bash_history
if [ "$PIM_TRIM" = 1 ]; then
  say "trimming free space"
  fstrim -av || say "fstrim is not supported here; the image stays larger"
fi
sync
"""


def run_provision(job: Job, base: Path, disk: Path, key: KeyPair) -> dict[str, object]:
    """Provision on an overlay of base/disk.qcow2; resume base's saved state if it has one."""
    spec, events = job.spec, job.events
    img.create(disk, spec.disk_size, backing=base / "disk.qcow2")
    if (base / "efivars.fd").exists():
        shutil.copyfile(base / "efivars.fd", disk.parent / "efivars.fd")
    port = free_port()
    incoming = resume_uri(base)
    vm_cfg = job.vm_config(STAGE, disk, ssh_forward=port, incoming=incoming)
    password = spec.ssh.password.get_secret_value() if spec.ssh.password else None
    facts: dict[str, object] = {}
    started = time.monotonic()
    with job.package_cache() as proxy, Machine(vm_cfg, events, STAGE) as vm, ConsoleWatcher(
        vm_cfg.serial_log, events, STAGE
    ):
        session = Session(port, spec.ssh.user, key, password, events, STAGE)
        try:
            if incoming:
                loaded = wait_resumed(vm)
                events.log(STAGE, f"resumed the booted guest in {loaded:.1f}s")
                _sync_clock(vm)
            waited = session.wait(spec.ssh.timeout, alive=lambda: vm.running)
            events.log(STAGE, f"SSH is up after {waited:.0f}s" + (" (resumed)" if incoming else ""))
            facts["ssh_wait_seconds"] = round(waited, 1)
            steps = []
            for index, step in enumerate(spec.provision, 1):
                t0 = time.monotonic()
                _run_step(job, session, index, step, {"PIM_PROXY_URL": proxy.url()}, alive=lambda: vm.running)
                steps.append({"step": step.label, "seconds": round(time.monotonic() - t0, 1)})
            facts["steps"] = steps
            comment = key.public_openssh.rsplit(" ", 1)[-1]
            env = {
                "PIM_CLOUD_INIT": "1" if spec.finalize.cloud_init else "0",
                "PIM_TRIM": "1" if spec.finalize.trim else "0",
                "PIM_KEY_COMMENT": comment,
            }
            session.upload(GENERALIZE.encode(), "/tmp/pim-generalize", 0o700)
            session.run("generalize", script_command("/tmp/pim-generalize", env))
        finally:
            session.close()
        facts["shutdown"] = vm.stop(graceful=120.0)
    facts["seconds"] = round(time.monotonic() - started, 1)
    return facts


def _sync_clock(vm: Machine) -> None:
    """A resumed guest's clock stands where it was saved; set it to now."""
    try:
        vm.agent(timeout=60).call("guest-set-time", time=time.time_ns())
    except VMError as e:
        vm.events.warning(STAGE, f"could not set the resumed guest's clock: {e}")


def _run_step(job: Job, session: Session, index: int, step: ShellStep | FileStep,  # type: ignore[no-untyped-def]
              base_env: dict[str, str], alive) -> None:
    events = job.events
    label = f"{index}:{step.label}"
    if isinstance(step, FileStep):
        events.log(STAGE, f"step {label}")
        session.upload(job.cfg.path(step.source).read_bytes(), step.destination, int(step.mode, 8))
        return
    body = step.inline if step.inline is not None else job.cfg.path(step.script).read_text()  # type: ignore[arg-type]
    if not body.startswith("#!"):
        body = "#!/bin/sh\nset -e\n" + body
    path = f"/tmp/pim-step-{index}"
    events.log(STAGE, f"step {label}")
    session.upload(body.encode(), path, 0o700)
    status, tail = session.run(label, script_command(path, {**base_env, **job.spec.env, **step.env}), check=False)
    if step.expect_disconnect:
        # The step reboots the guest: whatever its exit status, reconnect once the
        # guest is back, so the next step never runs on a guest going down.
        if status not in (0, -1):
            raise ProvisionError(f"step {label} failed with exit status {status}", tail)
        session.close()
        events.log(STAGE, f"step {label} done; waiting for the guest to come back")
        time.sleep(10.0)
        session.wait(job.spec.ssh.timeout, alive)
        return
    if status == -1 or not session.connected:
        raise ProvisionError(
            f"step {label}: the SSH connection dropped (set expect_disconnect: true if the step reboots the guest)",
            tail,
        )
    if status != 0:
        raise ProvisionError(f"step {label} failed with exit status {status}", tail)
