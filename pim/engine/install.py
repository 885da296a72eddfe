"""The install stage: boot the installer, serve its answer file, wait for it to finish."""

from __future__ import annotations

import time
from pathlib import Path

from pim.engine import iso as isofs
from pim.engine.answers import AnswerServer
from pim.engine.console import ConsoleWatcher
from pim.engine.errors import InstallerFailed
from pim.engine.installers import render
from pim.engine.job import Job
from pim.engine.qemu import img
from pim.engine.qemu.machine import Machine
from pim.engine.ssh import KeyPair

STAGE = "install"


def run_install(job: Job, disk: Path, key: KeyPair) -> dict[str, object]:
    """Install onto a new disk; returns facts for the manifest."""
    spec, inst, events = job.spec, job.spec.installer, job.events
    img.create(disk, spec.disk_size)
    boot = inst.boot
    kernel = initrd = None
    if boot.kernel and boot.initrd:
        kernel, initrd = job.work / "kernel", job.work / "initrd"
        isofs.extract(job.iso, {boot.kernel: kernel, boot.initrd: initrd})
    password = spec.ssh.password.get_secret_value() if spec.ssh.password else None
    events.add_secret(password)

    with AnswerServer({}, events, STAGE) as server, job.package_cache() as proxy:
        variables: dict[str, object] = {
            "proxy_url": proxy.url(),
            **inst.vars,
            "image": job.name,
            "hostname": job.hostname,
            "arch": spec.arch.value,
            "ssh_user": spec.ssh.user,
            "ssh_public_key": key.public_openssh,
            "ssh_password": password,
            "http_url": server.url(),
            "answer_url": server.url(inst.answer_name),
        }
        template = job.cfg.path(inst.template)
        server.add(inst.answer_name, render(template.read_text(), variables, str(template)).encode())
        for name, path in inst.files.items():
            server.add(name, job.cfg.path(path))
        append = render(boot.params, variables, "installer.boot.params") if kernel else None
        vm_cfg = job.vm_config(STAGE, disk, cdrom=job.iso, kernel=kernel, initrd=initrd, append=append, no_reboot=True)

        started = time.monotonic()
        with Machine(vm_cfg, events, STAGE) as vm, ConsoleWatcher(
            vm_cfg.serial_log, events, STAGE, inst.failure_patterns
        ) as console:
            if boot.command:
                typed = [render(chunk, variables, "installer.boot.command") for chunk in boot.command]
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
        if inst.answer_name not in server.fetched:
            events.warning(STAGE, "the installer finished without fetching its answer file")
        events.log(STAGE, f"install finished in {seconds:.0f}s")
        return {"seconds": round(seconds, 1), "answer_fetched": inst.answer_name in server.fetched}


def _type_boot_command(vm: Machine, command: list[str], delay: float) -> None:
    if vm.wait(delay):
        return
    mon = vm.qmp()
    try:
        for chunk in command:
            mon.type_text(chunk)
    finally:
        mon.close()
