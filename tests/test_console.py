import time
from pathlib import Path

from pim.engine.guest.console import ConsoleWatcher
from pim.engine.events import Emitter, Event


def _wait_for(cond, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_failure_line_is_caught_with_the_tail(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    seen: list[Event] = []
    with ConsoleWatcher(log, Emitter(seen.append), "install") as w:
        with open(log, "w") as f:
            for i in range(100):
                f.write(f"\x1b[1mline {i}\x1b[0m\r\n")
            f.flush()
            assert _wait_for(lambda: len(seen) == 100)
            assert w.failure is None
            f.write("[   12.5] Kernel panic - not syncing: Attempted to kill init!\r\n")
            f.flush()
            assert _wait_for(lambda: w.failure is not None)
    assert "Kernel panic" in (w.failure or "")
    tail = w.tail()
    assert len(tail) == 40 and tail[0] == "line 61" and "Kernel panic" in tail[-1]
    assert w.seen(r"^line 7$") and not w.seen("line 100")


def test_user_patterns_and_unterminated_last_line(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    w = ConsoleWatcher(log, Emitter(), "install", [r"ERROR: .* failed"])
    with w:
        log.write_text("ok\nERROR: step foo failed")  # no newline: read on drain
        w.drain()
    assert w.failure == "ERROR: step foo failed"


def test_the_tail_keeps_what_led_to_a_failure_however_much_follows() -> None:
    from pim.engine.guest.console import AFTER_FAILURE, TAIL_LINES, LineWatch, Patterns
    from pim.engine.events import Emitter

    watch = LineWatch(Emitter(), "install", "console", Patterns(failures=(r"Kernel panic",)))
    for i in range(50):
        watch.feed(f"boot line {i}")
    watch.feed("installer: installation failed: disk exploded")
    watch.feed("Kernel panic - not syncing: Attempted to kill init!")
    for i in range(60):  # the panic's call trace, read in the same chunk
        watch.feed(f" trace line {i}")
    tail = watch.tail()
    assert watch.failure == "Kernel panic - not syncing: Attempted to kill init!"
    assert "installer: installation failed: disk exploded" in tail and len(tail) == TAIL_LINES
    assert tail[-1] == f" trace line {AFTER_FAILURE - 1}"
