"""The install stage: boot the installer, serve its answer file, wait for it to finish.

The installer is watched on two streams: the serial console (every installer) and
its own log stream, received as UDP syslog where the installer can send one
(d-i's log_host/log_port). A known failure line on either ends the build at once.
"""

from __future__ import annotations

import time
from pathlib import Path

from pim.engine.source import iso as isofs
from pim.engine.services.answers import AnswerServer
from pim.engine.guest.console import BASE_FAILURES, ConsoleWatcher, LineWatch, Patterns
from pim.engine.errors import InstallerFailed
from pim.engine.installers import families
from pim.engine.installers.prepare import answer_name, build_variables, prepare
from pim.engine.services.syslog import SyslogReceiver
from pim.engine.pipeline.context import BuildContext
from pim.engine.qemu import img
from pim.engine.qemu.machine import Machine
from pim.engine.config.spec import Family
from pim.engine.guest.ssh import KeyPair
from pim.engine.timeline import Timeline

STAGE = "install"


def run_install(ctx: BuildContext, disk: Path, key: KeyPair) -> dict[str, object]:
    """Create `disk` (the spec's disk size) and run the installer onto it, serving its
    answer files with `key`'s public half authorized for the build user.

    Returns facts for the manifest (seconds, whether the answer file was fetched,
    log datagrams received). Raises InstallerFailed (a failure line on the console or
    the log stream, a non-zero QEMU exit, or `installer.timeout` passed) with the
    console tail, InputError for a bad template or boot layout.
    """
    spec, inst, events = ctx.spec, ctx.spec.installer, ctx.events
    timeline = Timeline(events, STAGE)
    img.create(disk, spec.disk_size)
    password = spec.ssh.password.get_secret_value() if spec.ssh.password else None
    events.add_secret(password)
    name = answer_name(spec)

    family = None if inst.family == Family.custom else families.get(inst.family.value)
    log_patterns = family.log_patterns(inst.failure_patterns) if family else Patterns(
        failures=(*BASE_FAILURES, *inst.failure_patterns))

    with AnswerServer({}, events, STAGE) as server, SyslogReceiver(events, STAGE, log_patterns) as syslog, \
            ctx.package_cache() as proxy:
        events.add_secret(server.token)  # the answer URL reaches the console and the log stream
        log_host, log_port = syslog.guest_address
        variables = build_variables(spec, ctx.name, hostname=ctx.hostname, ssh_public_key=key.public_openssh,
                                    http_url=server.url(), answer_url=server.url(name), proxy_url=proxy.url(),
                                    log_host=log_host, log_port=log_port)
        # Everything rendered and checked (boot params, boot command, can the build log in) before QEMU starts.
        prepared = prepare(ctx.cfg, spec, ctx.iso, variables)
        events.add_secret(prepared.variables.get("ssh_password_hash"))
        for served, content in prepared.files.items():
            server.add(served, content)
        boot = prepared.boot
        kernel = initrd = append = None
        if boot.kernel and boot.initrd:
            kernel, initrd = ctx.work / "kernel", ctx.work / "initrd"
            isofs.extract(ctx.iso, {boot.kernel: kernel, boot.initrd: initrd})
            append = prepared.params  # with the log stream's parameters for a detected boot
        vm_cfg = ctx.vm_config(STAGE, disk, cdrom=ctx.iso, kernel=kernel, initrd=initrd, append=append, no_reboot=True)

        timeline.mark("disk, answer files and boot files")
        started = time.monotonic()
        with Machine(vm_cfg, events, STAGE) as vm, ConsoleWatcher(
            vm_cfg.serial_log, events, STAGE, prepared.failure_patterns, family.progress if family else ()
        ) as console:
            timeline.mark("QEMU start")
            if prepared.command:
                events.log(STAGE, f"typing the boot command in {boot.command_delay:.0f}s")
                _type_boot_command(vm, prepared.command, boot.command_delay)
            deadline = started + inst.timeout
            while not vm.wait(0.5):
                _check(syslog.watch, console.watch)
                if time.monotonic() > deadline:
                    raise InstallerFailed(
                        f"the install did not finish within {inst.timeout:.0f}s (installer.timeout)", console.tail()
                    )
            console.drain()
            syslog.drain()
            _check(syslog.watch, console.watch)
            if vm.returncode != 0:
                raise InstallerFailed(f"QEMU exited with status {vm.returncode} during the install", console.tail())
            ended = time.monotonic()
            timeline.milestones(console.seen_at, ended)
            timeline.mark("installer", ended)
        seconds = time.monotonic() - started
        if name not in server.fetched:
            events.warning(STAGE, "the installer finished without fetching its answer file")
        events.log(STAGE, f"install finished in {seconds:.0f}s")
        return {"seconds": round(seconds, 1), "answer_fetched": name in server.fetched,
                "log_datagrams": syslog.datagrams, "phases": timeline.facts()}


def _check(*watches: LineWatch) -> None:
    """Fail with the first stream that saw a failure line (the log stream names step and file)."""
    for watch in watches:
        if watch.failure:
            raise InstallerFailed(f"the installer failed{watch.describe()}", watch.tail())


def _type_boot_command(vm: Machine, command: list[str], delay: float) -> None:
    if vm.wait(delay):
        return
    mon = vm.qmp()
    try:
        for chunk in command:
            if not mon.type_text(chunk, pause=vm.wait):  # <wait>s are spent watching QEMU
                return
    finally:
        mon.close()
