"""A stage's phases: consecutive, never backwards, emitted as events and kept for the
manifest; a boot's firmware and kernel phases come from console milestones."""

from __future__ import annotations

import time
from pathlib import Path

from pim.engine.events import Emitter, Event
from pim.engine.guest.console import ConsoleWatcher
from pim.engine.timeline import Timeline


def test_phases_run_back_to_back_and_a_late_read_never_runs_backwards() -> None:
    seen: list[Event] = []
    t = Timeline(Emitter(seen.append), "boot", start=100.0)
    t.mark("overlay", at=100.5)
    t.mark("QEMU start", at=100.75)
    t.mark("firmware", at=100.6)  # read before the last mark: counts as no time
    t.mark("kernel", at=103.0)
    assert t.facts() == [{"phase": "overlay", "seconds": 0.5}, {"phase": "QEMU start", "seconds": 0.25},
                         {"phase": "firmware", "seconds": 0.0}, {"phase": "kernel", "seconds": 2.25}]
    assert [(e.stage, e.data["phase"], e.data["seconds"]) for e in seen][-1] == ("boot", "kernel", 2.25)
    assert seen[-1].message == "phase kernel: 2.2s"


def test_a_boot_is_split_at_the_console_milestones_or_kept_whole(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_text("SeaBIOS (version 1.16)\n")
    with ConsoleWatcher(log, Emitter(), "boot") as console:
        time.sleep(0.3)
        with log.open("a") as f:
            f.write("[    0.000000] Linux version 6.1.0-50-amd64 (debian-kernel@lists.debian.org)\n")
            f.flush()
            time.sleep(0.3)
            f.write("[    3.250123] Run /init as init process\n")
            f.flush()
            time.sleep(0.3)
    seen_at = console.seen_at
    assert set(seen_at) == {"firmware", "kernel"} and seen_at["firmware"] < seen_at["kernel"]
    t = Timeline(Emitter(), "boot", start=seen_at["firmware"] - 1.0)
    t.boot(seen_at, sshd_at=seen_at["kernel"] + 2.0)
    phases = t.facts()
    assert [p["phase"] for p in phases] == ["firmware", "kernel", "userspace to sshd"]
    assert phases[0]["seconds"] == 1.0 and phases[2]["seconds"] == 2.0 and 0.1 < phases[1]["seconds"] < 1.5

    quiet = Timeline(Emitter(), "boot", start=0.0)
    quiet.boot({}, sshd_at=7.5)
    assert quiet.facts() == [{"phase": "boot to sshd", "seconds": 7.5}]
