"""Where a stage's time goes: its phases, one after another on the monotonic clock.

    timeline = Timeline(events, "boot")
    ...                                   # create the overlay
    timeline.mark("overlay")              # the phase from the start to now
    timeline.mark("firmware", at=t_kernel_line)

Each phase runs from the end of the one before (or the timeline's start) to its
mark, is emitted as a log event (data: `phase`, `seconds`) when it ends, and is
kept for the stage's manifest (`facts()`). Names say whose work a phase is:
the guest's (firmware, kernel, userspace to sshd, installer, shutdown) or PIM's
(overlay, QEMU start, SSH login, save state, convert).
"""

from __future__ import annotations

import time

from pim.engine.events import Emitter

# Console lines that end a boot's phases, as the kernel prints them (x86 and arm64):
# its first line ends the firmware and boot loader, running init ends the kernel.
BOOT_MILESTONES = {
    "firmware": r"\bLinux version \d|\bBooting Linux on physical CPU",
    "kernel": r"\bRun \S+ as init process",
}


class Timeline:
    """The phases of one stage (see the module docstring). `start`: monotonic seconds
    the first phase starts at (default: now)."""

    def __init__(self, events: Emitter, stage: str, start: float | None = None):
        self.events, self.stage = events, stage
        self.start = self.last = time.monotonic() if start is None else start
        self.phases: list[tuple[str, float]] = []

    def mark(self, phase: str, at: float | None = None) -> None:
        """End `phase` at `at` (monotonic seconds; default: now). A time before the
        last mark (a console line read late) counts as the last mark: phases never
        overlap and never run backwards."""
        at = max(self.last, time.monotonic() if at is None else at)
        seconds = round(at - self.last, 2)
        self.last = at
        self.phases.append((phase, seconds))
        self.events.log(self.stage, f"phase {phase}: {seconds:.1f}s", phase=phase, seconds=seconds)

    def milestones(self, seen_at: dict[str, float], until: float) -> bool:
        """Mark firmware and kernel where the console showed their milestones
        (`seen_at`, from a ConsoleWatcher) before `until`; whether any was."""
        marked = False
        for phase in BOOT_MILESTONES:
            at = seen_at.get(phase)
            if at is not None and self.last <= at <= until:
                self.mark(phase, at)
                marked = True
        return marked

    def boot(self, seen_at: dict[str, float], sshd_at: float) -> None:
        """Mark a boot's phases: `milestones`, then the rest up to sshd's first answer
        at `sshd_at`. A console without them (a quiet kernel, a console elsewhere)
        gives one phase, boot to sshd."""
        self.mark("userspace to sshd" if self.milestones(seen_at, sshd_at) else "boot to sshd", sshd_at)

    def facts(self) -> list[dict[str, object]]:
        """[{"phase": name, "seconds": s}, ...] in order, for the manifest."""
        return [{"phase": name, "seconds": seconds} for name, seconds in self.phases]
