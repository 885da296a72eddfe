"""The install stage: boot the installer, serve its answer file, wait for it to finish."""

from __future__ import annotations

import time
from pathlib import Path

from pim.engine import iso as isofs
from pim.engine.answers import AnswerServer
from pim.engine.console import ConsoleWatcher
from pim.engine.errors import InstallerFailed
from pim.engine.installers import render
from pim.engine.installers.prepare import answer_name, installer_variables, prepare
from pim.engine.job import Job
from pim.engine.qemu import img
from pim.engine.qemu.machine import Machine
from pim.engine.ssh import KeyPair

STAGE = "install"


def run_install(job: Job, disk: Path, key: KeyPair) -> dict[str, object]:
    """Install onto a new disk; returns facts for the manifest."""
    spec, inst, events = job.spec, job.spec.installer, job.events
    img.create(disk, spec.disk_size)
    password = spec.ssh.password.get_secret_value() if spec.ssh.password else None
    events.add_secret(password)
    name = answer_name(spec)

    with AnswerServer({}, events, STAGE) as server, job.package_cache() as proxy:
        variables: dict[str, object] = {
            **installer_variables(spec),
            "proxy_url": proxy.url(),
            "image": job.name,
            "hostname": job.hostname,
            "ssh_public_key": key.public_openssh,
            "http_url": server.url(),
            "answer_url": server.url(name),
        }
        prepared = prepare(job.cfg, spec, job.iso, variables)
        for served, content in prepared.files.items():
            server.add(served, content)
        boot = prepared.boot
        kernel = initrd = append = None
        if boot.kernel and boot.initrd:
            kernel, initrd = job.work / "kernel", job.work / "initrd"
            isofs.extract(job.iso, {boot.kernel: kernel, boot.initrd: initrd})
            append = render(boot.params, prepared.variables, "installer.boot.params")
        vm_cfg = job.vm_config(STAGE, disk, cdrom=job.iso, kernel=kernel, initrd=initrd, append=append, no_reboot=True)

        started = time.monotonic()
        with Machine(vm_cfg, events, STAGE) as vm, ConsoleWatcher(
            vm_cfg.serial_log, events, STAGE, prepared.failure_patterns
        ) as console:
            if boot.command:
                typed = [render(chunk, prepared.variables, "installer.boot.command") for chunk in boot.command]
                events.log(STAGE, f"typing the boot command in {boot.command_delay:.0f}s")
                _type_boot_command(vm, typed, boot.command_delay)
            deadline = started + inst.timeout
            while not vm.wait(0.5):
                if console.failure:
                    raise InstallerFailed(f"the installer failed: {console.failure}", console.tail())
                if time.monotonic() > deadline:
                    raise InstallerFailed(
                        f"the install did not finish within {inst.timeout:.0f}s (installer.timeout)", console.tail()
                    )
            console.drain()
            if console.failure:
                raise InstallerFailed(f"the installer failed: {console.failure}", console.tail())
            if vm.returncode != 0:
                raise InstallerFailed(f"QEMU exited with status {vm.returncode} during the install", console.tail())
        seconds = time.monotonic() - started
        if name not in server.fetched:
            events.warning(STAGE, "the installer finished without fetching its answer file")
        events.log(STAGE, f"install finished in {seconds:.0f}s")
        return {"seconds": round(seconds, 1), "answer_fetched": name in server.fetched}


def _type_boot_command(vm: Machine, command: list[str], delay: float) -> None:
    if vm.wait(delay):
        return
    mon = vm.qmp()
    try:
        for chunk in command:
            mon.type_text(chunk)
    finally:
        mon.close()
