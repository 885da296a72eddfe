"""`pim vm list|status|stop|console`: the VMs PIM builds are running right now."""

from __future__ import annotations

import json
import os
import select
import socket
import sys

import typer

from pim.cli.common import fail

app = typer.Typer(no_args_is_help=True)


def _running() -> list[tuple[str, int]]:
    from pim.engine.paths import runtime_dir
    from pim.engine.qemu.argv import RuntimeFiles
    from pim.engine.qemu.machine import pid_alive, read_pid

    out = []
    for pidfile in sorted(runtime_dir().glob("*.pid")):
        name = pidfile.stem
        pid = read_pid(RuntimeFiles.for_name(name))
        if pid is not None and pid_alive(pid):
            out.append((name, pid))
    return out


@app.command("list")
def list_() -> None:
    """List running VMs (name and QEMU pid)."""
    vms = _running()
    if not vms:
        typer.echo("no running VMs", err=True)
    for name, pid in vms:
        typer.echo(f"{name}\t{pid}")


@app.command()
def status(name: str, json_out: bool = typer.Option(False, "--json")) -> None:
    """QMP run state and guest-agent reachability of a VM."""
    from pim.engine.errors import VMError
    from pim.engine.qemu.agent import AgentError, GuestAgent
    from pim.engine.qemu.argv import RuntimeFiles
    from pim.engine.qemu.qmp import QMP

    rt = RuntimeFiles.for_name(name)
    if name not in dict(_running()):
        raise fail(VMError(f"no running VM named {name!r}"))
    info: dict[str, object] = {"name": name, "pid": dict(_running())[name]}
    try:
        mon = QMP(rt.qmp, timeout=5)
        info["status"] = mon.status()
        mon.close()
    except VMError as e:
        info["status"] = f"unknown ({e})"
    try:
        ga = GuestAgent(rt.ga).connect(timeout=3)
        info["guest_agent"] = ga.info().get("version", "answering")
        ga.close()
    except AgentError:
        info["guest_agent"] = "not answering"
    if json_out:
        typer.echo(json.dumps(info))
    else:
        for k, v in info.items():
            typer.echo(f"{k}: {v}")


@app.command()
def stop(name: str, timeout: float = typer.Option(60.0, help="Seconds to wait for a clean power-off")) -> None:
    """Stop a VM: guest agent or ACPI power-off, then QMP quit, SIGTERM, SIGKILL."""
    from pim.engine.errors import PimError
    from pim.engine.events import Emitter
    from pim.engine.qemu.machine import stop_by_name

    try:
        how = stop_by_name(name, Emitter(), graceful=timeout)
    except PimError as e:
        raise fail(e) from None
    typer.echo(f"{name}: stopped ({how})", err=True)


@app.command()
def console(name: str) -> None:
    """Attach to a VM's serial console (Ctrl-] to detach)."""
    from pim.engine.errors import VMError
    from pim.engine.qemu.argv import RuntimeFiles

    rt = RuntimeFiles.for_name(name)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(rt.serial))
    except OSError as e:
        raise fail(VMError(f"cannot attach to {name}'s console: {e}")) from None
    typer.echo(f"attached to {name}'s console; Ctrl-] detaches", err=True)
    _pump(sock)


def _pump(sock: socket.socket) -> None:
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd) if os.isatty(fd) else None
    try:
        if saved is not None:
            tty.setraw(fd)
        while True:
            ready, _, _ = select.select([sock, fd], [], [])
            if sock in ready:
                data = sock.recv(4096)
                if not data:
                    break
                os.write(sys.stdout.fileno(), data)
            if fd in ready:
                data = os.read(fd, 1024)
                if not data or b"\x1d" in data:
                    break
                sock.sendall(data)
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        sock.close()
