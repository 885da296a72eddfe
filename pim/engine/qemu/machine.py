"""One owner for each QEMU process, from launch to reaped exit.

`Machine` is a context manager: leaving it, for whatever reason (Ctrl-C
included), runs the shutdown ladder and removes the runtime files. The same
ladder stops a VM owned by another PIM process (`pim vm stop`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from pim.engine.errors import VMError, WaitAborted, WaitTimeout
from pim.engine.events import Emitter
from pim.engine.qemu.agent import AgentError, GuestAgent
from pim.engine.qemu.argv import RuntimeFiles, VmConfig, build_argv
from pim.engine.qemu.qmp import QMP
from pim.engine.run import pid_alive, spawn_detached
from pim.engine.wait import until


def read_pid(rt: RuntimeFiles) -> int | None:
    try:
        return int(rt.pid.read_text().strip())
    except (OSError, ValueError):
        return None


def remove_runtime_files(rt: RuntimeFiles) -> None:
    for path in rt.all():
        path.unlink(missing_ok=True)


def shutdown_ladder(
    wait: Callable[[float], bool],
    signal_: Callable[[int], None],
    qmp: Callable[[], QMP | None],
    agent: Callable[[], GuestAgent | None],
    events: Emitter,
    stage: str | None,
    graceful: float = 60.0,
    step: float = 10.0,
) -> str:
    """Stop a VM, gently first: guest agent or ACPI powerdown, QMP quit, SIGTERM, SIGKILL.

    `wait(t)` returns True once the process has exited. Returns the rung that worked.
    graceful <= 0 skips the guest's own shutdown (nothing of the VM is kept): QMP quit
    first, so an interrupted build ends in seconds.
    """
    if wait(0):
        return "exited"
    ga, mon = agent() if graceful > 0 else None, qmp()
    try:
        return _climb(wait, signal_, mon, ga, events, stage, graceful, step)
    finally:
        if mon is not None:
            mon.close()
        if ga is not None:
            ga.close()


def _climb(wait, signal_, mon, ga, events, stage, graceful, step) -> str:  # type: ignore[no-untyped-def]
    how = None
    if ga is not None:
        try:
            ga.shutdown()
            how = "guest agent shutdown"
        except AgentError:
            pass
    if how is None and graceful > 0 and mon is not None:
        try:
            mon.system_powerdown()
            how = "ACPI powerdown"
        except VMError:
            pass
    if how is not None:
        events.log(stage, f"shutting down the guest ({how})")
        if wait(graceful):
            return how
        events.warning(stage, f"guest did not power off within {graceful:.0f}s after {how}")
    if mon is not None:
        mon.quit()
        if wait(step):
            return "QMP quit"
    signal_(signal.SIGTERM)
    if wait(step):
        return "SIGTERM"
    signal_(signal.SIGKILL)
    if wait(step):
        return "SIGKILL"
    raise VMError("QEMU survived SIGKILL")


class Machine:
    """A running QEMU. Use as `with Machine(cfg, events) as vm: ...`."""

    def __init__(self, cfg: VmConfig, events: Emitter, stage: str | None = None, qemu_log: Path | None = None):
        self.cfg = cfg
        self.rt = cfg.runtime
        self.events = events
        self.stage = stage
        self.qemu_log = qemu_log or cfg.serial_log.with_name(cfg.serial_log.stem + ".qemu.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self._agent: GuestAgent | None = None
        self.started_at: float | None = None  # monotonic time QEMU was started

    # -- lifetime -----------------------------------------------------------
    def __enter__(self) -> "Machine":
        self.rt.check()  # socket paths within the platform's limit, before anything starts
        self._claim_runtime_files()
        argv = build_argv(self.cfg)
        self.events.log(self.stage, f"starting QEMU ({self.cfg.accel}, {self.cfg.cpus} cpu, {self.cfg.memory_mib} MiB)")
        self.started_at = time.monotonic()
        self.proc = spawn_detached(argv, self.qemu_log)
        try:
            self._wait_for_qmp(timeout=15.0)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                # Leaving on an error or an interrupt keeps nothing of the VM: no guest shutdown.
                # exc_info() covers a start that failed (__enter__ calls this while handling it).
                failing = exc[0] is not None or sys.exc_info()[0] is not None
                self.stop(graceful=0.0 if failing else 60.0)
        finally:
            if self.proc is not None and self.proc.poll() is None:  # stop() itself was interrupted
                self.proc.kill()
                self.proc.wait()
            self._close_clients()
            remove_runtime_files(self.rt)
            if self.started_at is not None:
                ran = round(time.monotonic() - self.started_at, 2)
                self.events.log(self.stage, f"QEMU ran {ran:.1f}s", qemu_seconds=ran)

    def _claim_runtime_files(self) -> None:
        pid = read_pid(self.rt)
        if pid is not None and pid_alive(pid):
            raise VMError(
                f"a VM named {self.rt.name!r} is already running (pid {pid}); "
                f"stop it with `pim vm stop {self.rt.name}` or wait for its build to end"
            )
        remove_runtime_files(self.rt)  # stale files of a VM that is gone

    def _wait_for_qmp(self, timeout: float) -> None:
        assert self.proc is not None
        proc = self.proc

        # The socket file appears at bind(), a moment before listen(): a connection in
        # between is refused (a window that grows on a loaded host), so the check connects.
        def answers() -> bool:
            if not self.rt.qmp.exists():
                return False
            self.qmp().close()
            return True

        try:
            until(answers, what="QEMU's QMP socket", timeout=timeout, interval=0.05,
                  alive=lambda: proc.poll() is None, ignore=(VMError,))
        except WaitAborted:
            raise VMError(f"QEMU exited at start with status {proc.returncode}", self._qemu_log_tail()) from None
        except WaitTimeout:
            if self.wait(2.0):  # it gave up meanwhile (a bad device, say): that is the news
                raise VMError(f"QEMU exited at start with status {proc.returncode}", self._qemu_log_tail()) from None
            raise VMError(f"QEMU did not open its QMP socket within {timeout:.0f}s", self._qemu_log_tail()) from None

    def _qemu_log_tail(self) -> list[str]:
        try:
            return self.qemu_log.read_text(errors="replace").splitlines()[-40:]
        except OSError:
            return []

    def _close_clients(self) -> None:
        if self._agent is not None:
            self._agent.close()
            self._agent = None

    # -- state --------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def wait(self, timeout: float) -> bool:
        """True when QEMU has exited within timeout."""
        assert self.proc is not None
        try:
            self.proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def qmp(self, timeout: float = 10.0) -> QMP:
        """A new QMP connection; close it after use. QMP takes one client at a
        time, so holding it would lock out `pim vm status` and `pim vm stop`."""
        return QMP(self.rt.qmp, timeout=timeout)

    def qmp_call(self, command: str, **args: object) -> object:
        mon = self.qmp()
        try:
            return mon.cmd(command, **args)
        finally:
            mon.close()

    def agent(self, timeout: float = 120.0) -> GuestAgent:
        """The guest agent, waiting up to timeout for it to answer."""
        if self._agent is None:
            self._agent = GuestAgent(self.rt.ga).wait_ready(timeout, alive=lambda: self.running)
        return self._agent

    # -- stopping -----------------------------------------------------------
    def stop(self, graceful: float = 60.0) -> str:
        assert self.proc is not None
        proc = self.proc

        def quick_agent() -> GuestAgent | None:
            try:
                return self._agent or GuestAgent(self.rt.ga).connect(timeout=2.0)
            except AgentError:
                return None

        # A VM being discarded gets short rungs: QEMU busy loading a saved state on a
        # loaded host may not answer QMP or SIGTERM for a while, and nothing of it is kept.
        step = 10.0 if graceful > 0 else 2.0

        def quick_qmp() -> QMP | None:
            try:
                return self.qmp(timeout=min(5.0, step))
            except VMError:
                return None

        how = shutdown_ladder(self.wait, proc.send_signal, quick_qmp, quick_agent, self.events, self.stage, graceful,
                              step=step)
        self.events.log(self.stage, f"QEMU stopped ({how})")
        return how


def stop_by_name(name: str, events: Emitter, graceful: float = 60.0) -> str:
    """Stop a VM started by another PIM process, found by its runtime files."""
    rt = RuntimeFiles.for_name(name)
    pid = read_pid(rt)
    if pid is None or not pid_alive(pid):
        remove_runtime_files(rt)
        raise VMError(f"no running VM named {name!r}")

    def wait(timeout: float) -> bool:
        try:
            until(lambda: not pid_alive(pid), what=f"VM {name!r} to exit", timeout=timeout, interval=0.1)
        except WaitTimeout:
            return False
        return True

    def qmp() -> QMP | None:
        try:
            return QMP(rt.qmp, timeout=5.0)
        except VMError:
            return None

    def agent() -> GuestAgent | None:
        try:
            return GuestAgent(rt.ga).connect(timeout=2.0)
        except AgentError:
            return None

    def send(sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    return shutdown_ladder(wait, send, qmp, agent, events, None, graceful)
