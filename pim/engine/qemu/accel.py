"""Choose the accelerator by trying it: a tiny guest must make progress in time.

A /dev/kvm node that exists is not proof that KVM works (some hosts hang the
vCPU), so each candidate runs a tiny guest, its own firmware on x86 and an ELF
on arm64, that writes a marker to the serial port; the candidates race (`race`).
The verdict is remembered per host boot and QEMU binary.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pim.engine.paths import runtime_dir
from pim.engine.platforms import arch_name
from pim.engine.qemu.argv import machine_type, qemu_binary
from pim.engine.run import DEVNULL, PIPE, find_tool, start

MARKER = b"PIM-ACCEL-OK"
PROBE_VERSION = 4  # bump when the probe changes, so remembered verdicts are redone

# x86 real mode, run from the reset vector as the machine's only firmware (-bios): print
# MARKER on COM1 (0x3f8), then halt. No SeaBIOS, whose start-up under TCG took 0.15 s.
_X86_CODE = bytes.fromhex(
    "66b900000001"  # mov ecx,0x01000000: a compute loop, about 50 ms under TCG, milliseconds under KVM
    "6649"  # dec ecx
    "75fc"  # jnz dec
    "8cc8"  # mov ax,cs
    "8ed8"  # mov ds,ax
    "baf803"  # mov dx,0x3f8
    "be2000"  # mov si,0x0020 (MARKER, right after these 32 bytes)
    "ac"  # lodsb
    "84c0"  # test al,al
    "7403"  # jz halt
    "ee"  # out dx,al
    "ebf8"  # jmp lodsb
    "fa"  # halt: cli
    "f4"  # hlt
    "ebfc"  # jmp halt
)
_RESET_VECTOR = 0xFFF0  # F000:FFF0, where an x86 CPU starts (Intel SDM vol. 3A, 9.1.4)


def probe_bios() -> bytes:
    """A 64 KiB firmware image (mapped at F0000-FFFFF) whose reset vector jumps to
    `_X86_CODE` at F000:0000, MARKER right after it."""
    rom = bytearray((_X86_CODE + MARKER + b"\0").ljust(0x10000, b"\0"))
    rom[_RESET_VECTOR:_RESET_VECTOR + 5] = bytes.fromhex("ea0000" "00f0")  # jmp far f000:0000
    return bytes(rom)


# AArch64 at EL1 with the MMU off, loaded by the virt machine from an ELF: print MARKER on
# the PL011 UART's data register (0x09000000 on QEMU's virt board), then wait.
_ARM_CODE = (
    0xD2A12001,  # movz x1, #0x0900, lsl #16      x1 = 0x09000000
    0x100000E2,  # adr  x2, MARKER                 (pc + 28)
    0x38401443,  # loop: ldrb w3, [x2], #1
    0x34000063,  # cbz  w3, done                   (pc + 12)
    0x39000023,  # strb w3, [x1]
    0x17FFFFFD,  # b    loop
    0xD503205F,  # done: wfe
    0x17FFFFFF,  # b    done
)
_ARM_LOAD = 0x40080000  # in the virt board's RAM, which starts at 0x40000000


def arm_probe_elf() -> bytes:
    """A minimal ELF64 (one PT_LOAD segment, System V gABI) holding `_ARM_CODE` and MARKER."""
    import struct

    body = b"".join(struct.pack("<I", w) for w in _ARM_CODE) + MARKER + b"\0"
    headers = 64 + 56
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # 64-bit, little-endian, version 1
    ehdr = ident + struct.pack("<HHIQQQIHHHHHH", 2, 183, 1, _ARM_LOAD + headers, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    size = headers + len(body)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, _ARM_LOAD, _ARM_LOAD, size, size, 0x1000)  # PT_LOAD, R+X
    return ehdr + phdr + body


@dataclass(frozen=True)
class Verdict:
    accel: str
    reason: str
    tried: dict[str, str]  # accelerator -> what happened


def candidates(arch: str, system: str | None = None, host: str | None = None) -> list[str]:
    """The accelerators to try for an `arch` guest, best first, on a host whose
    `os.uname()`'s sysname is `system` and machine is `host` (default: this
    one's): the platform's hypervisor (Linux: kvm; macOS: hvf) for a native guest, then
    tcg. A foreign guest gets tcg only (HVF and KVM run the host's own architecture)."""
    system = system or os.uname().sysname
    if arch != arch_name(host):  # a foreign guest
        return ["tcg"]
    if system == "Darwin":
        return ["hvf", "tcg"]
    if system == "Linux":
        return ["kvm", "tcg"]
    return ["tcg"]


GRACE = 0.3  # seconds at least that a better accelerator gets after a worse one answered
# Ends a verdict reached by comparison, not by a deadline or an error: a working KVM that
# was only slow to start on a loaded host must not be passed over until the next reboot.
RELATIVE = "; not remembered, probed again next time"


class _Probe:
    """One probe guest under one accelerator, started at construction; `poll` says
    how it went once it is decided (None while it is still running)."""

    def __init__(self, accel: str, arch: str, folder: Path):
        self.accel, self.result, self.seconds = accel, None, None  # type: ignore[var-annotated]
        self.proc: subprocess.Popen[bytes] | None = None
        if accel == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
            self.result = (False, "/dev/kvm is missing or not accessible")
            return
        folder.mkdir()
        self.serial = folder / "serial.log"
        base = [qemu_binary(arch), "-nodefaults", "-display", "none", "-m", "64", "-serial", f"file:{self.serial}"]
        if arch == "aarch64":
            elf = folder / "probe.elf"
            elf.write_bytes(arm_probe_elf())
            from pim.engine.qemu.img import qemu_release

            machine = machine_type(arch, accel, qemu_release(arch), 64)
            argv = base + ["-machine", f"{machine},accel={accel}", "-cpu", "max" if accel == "tcg" else "host",
                           "-kernel", str(elf)]
        else:
            bios = folder / "probe.bios"
            bios.write_bytes(probe_bios())
            argv = base + ["-machine", f"pc,accel={accel}", "-bios", str(bios)]
        self.started = time.monotonic()
        self.proc = start(argv, stdout=DEVNULL, stderr=PIPE)

    def poll(self) -> tuple[bool, str] | None:
        if self.result is None and self.proc is not None:
            if self.serial.exists() and MARKER in self.serial.read_bytes():
                self.seconds = time.monotonic() - self.started
                self.result = (True, f"guest ran in {self.seconds:.2f}s")
            elif self.proc.poll() is not None:
                err = _stderr(self.proc)
                self.result = (False, f"QEMU exited ({self.proc.returncode}): "
                                      f"{err.splitlines()[-1] if err else 'no message'}")
        return self.result

    def give_up(self, why: str) -> None:
        if self.result is None:
            self.result = (False, why)

    def close(self) -> None:
        if self.proc is not None:
            _reap(self.proc)


def race(accels: list[str], arch: str = "x86_64", timeout: float = 5.0,
         cancel: threading.Event | None = None) -> list[tuple[str, bool, str]]:
    """Boot the marker guest under every accelerator in `accels` (best first) at once
    and decide each in that order: [(accel, works, what happened)], ending with the
    first that works (or with all of them when none does).

    A working hypervisor starts QEMU and runs the guest's compute loop in about
    0.05 s; emulation takes about 0.1 s for the same. So a better accelerator that
    has not answered when a worse one has, and then gets half as long again (at least
    GRACE seconds more) without answering, is hung, or slower than emulation: either
    way not worth using. A host with a hung KVM pays about 0.4 s, not `timeout`.
    `cancel` set: the race ends at once with what was decided so far (maybe nothing).
    Raises MissingTool when QEMU for arch is not installed.
    """
    with tempfile.TemporaryDirectory(prefix="pim-accel-") as tmp:
        probes: list[_Probe] = []
        try:
            for i, accel in enumerate(accels):
                probes.append(_Probe(accel, arch, Path(tmp) / f"{i}-{accel}"))
            t0 = time.monotonic()
            while True:
                if cancel is not None and cancel.is_set():
                    return _decided(probes)
                now = time.monotonic() - t0
                for i, probe in enumerate(probes):
                    result = probe.poll()
                    if result is None:
                        _judge(probe, probes[i + 1:], now, timeout)
                        break
                    if result[0]:
                        return _decided(probes[:i + 1])
                else:
                    return _decided(probes)
                time.sleep(0.02)
        finally:
            for probe in probes:
                probe.close()


def _decided(probes: list[_Probe]) -> list[tuple[str, bool, str]]:
    return [(p.accel, *p.result) for p in probes if p.result is not None]  # type: ignore[misc]


def _judge(pending: _Probe, worse: list[_Probe], now: float, timeout: float) -> None:
    """Give up on `pending` once a worse accelerator ran the guest and `pending` had
    half as long again (at least GRACE more seconds), or once `timeout` passed."""
    answered = [p for p in worse if p.poll() is not None and p.result[0]]  # type: ignore[index]
    if answered:
        other = answered[0]
        if now >= max(1.5 * other.seconds, other.seconds + GRACE):  # type: ignore[operator]
            pending.give_up(f"guest made no progress in {now:.1f}s, while {other.accel} ran it in "
                            f"{other.seconds:.2f}s (vCPU hung){RELATIVE}")
    elif now >= timeout:
        pending.give_up(f"guest made no progress within {timeout:.0f}s (vCPU hung)")


def probe_one(accel: str, arch: str = "x86_64", timeout: float = 5.0) -> tuple[bool, str]:
    """Boot the marker guest with accel within timeout seconds; (works, what happened).

    Raises MissingTool when QEMU for arch is not installed.
    """
    _, ok, what = race([accel], arch, timeout)[0]
    return ok, what


def _stderr(proc: subprocess.Popen[bytes]) -> str:
    return proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""


def _reap(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    if proc.stderr:
        proc.stderr.close()


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _memo_file(arch: str) -> Path:
    return runtime_dir() / f"accel-{arch}.json"


def _memo_key(arch: str) -> str:
    st = os.stat(find_tool(qemu_binary(arch)))  # MissingTool names the package to install
    return f"{PROBE_VERSION}|{_boot_id()}|{st.st_ino}:{st.st_mtime_ns}"


def choose(arch: str = "x86_64", requested: str = "auto", fresh: bool = False) -> Verdict:
    """The accelerator to use: `requested` unless it is auto, else the first that works:
    remembered for this host boot, else the verdict of a `prefetch` still running,
    else probed now (`race`).

    Raises MissingTool when QEMU for arch is not installed.
    """
    if requested != "auto":
        return Verdict(requested, f"set in the config (accel: {requested})", {})
    if not fresh:
        pending = _PREFETCHED.get(arch)
        if pending is not None:
            try:
                verdict = pending.wait()
            except BaseException:  # Ctrl-C while waiting: stop its QEMUs now, not at exit
                pending.stop()
                raise
            finally:
                _PREFETCHED.pop(arch, None)
            if verdict is not None:
                return verdict
        remembered = _remembered(arch)
        if remembered is not None:
            return remembered
    verdict = _probe(arch)
    assert verdict is not None  # nothing cancels this one
    return verdict


def _remembered(arch: str) -> Verdict | None:
    try:
        saved = json.loads(_memo_file(arch).read_text())
        if saved.get("key") == _memo_key(arch):
            return Verdict(**saved["verdict"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _probe(arch: str, cancel: threading.Event | None = None) -> Verdict | None:
    """Race the candidates and remember the verdict; None when `cancel` ended the race."""
    key = _memo_key(arch)
    tried: dict[str, str] = {}
    chosen, reason = "tcg", "no accelerator worked; TCG emulation (slow)"
    decided = race(candidates(arch), arch, cancel=cancel)
    if cancel is not None and cancel.is_set():
        return None
    for accel, ok, what in decided:
        tried[accel] = ("works: " if ok else "failed: ") + what
        if ok:
            chosen = accel
            others = "; ".join(f"{a} {v}" for a, v in tried.items() if a != "tcg")
            reason = (f"{accel} works ({what})" if accel != "tcg" else f"TCG: {others}" if others
                      else f"TCG: this host has no hardware acceleration for {arch} guests")
    verdict = Verdict(chosen, reason, tried)
    if not any(v.endswith(RELATIVE) for v in tried.values()):
        memo = _memo_file(arch)
        tmp = memo.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"key": key, "verdict": asdict(verdict)}))
        os.replace(tmp, memo)
    return verdict


class _Prefetch:
    """`_probe(arch)` in a thread; cancelled and joined when the process exits."""

    def __init__(self, arch: str):
        self.cancel = threading.Event()
        self.verdict: Verdict | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(arch,), name=f"accel-{arch}", daemon=True)
        self.thread.start()

    def _run(self, arch: str) -> None:
        try:
            self.verdict = _probe(arch, self.cancel)
        except BaseException as e:  # handed to choose(), which raises it
            self.error = e

    def wait(self) -> Verdict | None:
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.verdict

    def stop(self) -> None:
        self.cancel.set()
        self.thread.join()


_PREFETCHED: dict[str, _Prefetch] = {}


def prefetch(arch: str | None = None) -> None:
    """Start the verdict for `arch` (default: this host's own) in the background when
    none is remembered for this host boot, so that the probe's guests run while the
    command line loads its modules and its config; `choose` takes it over. One that
    nobody took over is cancelled at exit, its QEMUs stopped. Never raises: a probe
    that fails raises in `choose`."""
    arch = arch or arch_name()
    try:
        if arch in _PREFETCHED or arch not in ("x86_64", "aarch64") or _remembered(arch) is not None:
            return
    except Exception:  # MissingTool and the like: choose() says it
        return
    _PREFETCHED[arch] = _Prefetch(arch)


@atexit.register
def _stop_prefetches() -> None:
    for pending in list(_PREFETCHED.values()):
        pending.stop()
    _PREFETCHED.clear()
