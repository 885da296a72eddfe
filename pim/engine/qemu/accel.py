"""Choose the accelerator by trying it: a tiny guest must make progress in time.

A /dev/kvm node that exists is not proof that KVM works (some hosts hang the
vCPU right after the firmware), so each candidate boots a 512-byte boot sector
that writes a marker to the serial port. The verdict is remembered per host
boot and QEMU binary.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pim.engine.errors import WaitAborted, WaitTimeout
from pim.engine.paths import runtime_dir
from pim.engine.qemu.argv import qemu_binary
from pim.engine.run import DEVNULL, PIPE, find_tool, start
from pim.engine.wait import until

MARKER = b"PIM-ACCEL-OK"
PROBE_VERSION = 2  # bump when the probe changes, so remembered verdicts are redone

# x86 real mode, loaded at 0x7c00: print MARKER on COM1 (0x3f8), then halt.
_BOOT_CODE = bytes.fromhex(
    "66b900000004"  # mov ecx,0x04000000: a compute loop, so emulation shows up in the timing
    "6649"  # dec ecx
    "75fc"  # jnz dec
    "31c0"  # xor ax,ax
    "8ed8"  # mov ds,ax
    "baf803"  # mov dx,0x3f8
    "be207c"  # mov si,0x7c20 (MARKER)
    "ac"  # lodsb
    "84c0"  # test al,al
    "7403"  # jz halt
    "ee"  # out dx,al
    "ebf8"  # jmp lodsb
    "fa"  # halt: cli
    "f4"  # hlt
    "ebfc"  # jmp halt
)


def boot_sector() -> bytes:
    code = _BOOT_CODE + MARKER + b"\0"
    return code.ljust(510, b"\0") + b"\x55\xaa"


@dataclass(frozen=True)
class Verdict:
    accel: str
    reason: str
    tried: dict[str, str]  # accelerator -> what happened


def candidates(arch: str) -> list[str]:
    host = platform.machine().lower()
    native = (arch == "x86_64" and host in ("x86_64", "amd64")) or (arch == "aarch64" and host in ("arm64", "aarch64"))
    if not native:
        return ["tcg"]
    if platform.system() == "Darwin":
        return ["hvf", "tcg"]
    if platform.system() == "Linux":
        return ["kvm", "tcg"]
    return ["tcg"]


def probe_one(accel: str, arch: str = "x86_64", timeout: float = 5.0) -> tuple[bool, str]:
    """Boot the marker sector with accel within timeout seconds; (works, what happened).

    Raises MissingTool when QEMU for arch is not installed.
    """
    if arch != "x86_64":
        return _probe_start_only(accel, arch, timeout)
    if accel == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is missing or not accessible"
    with tempfile.TemporaryDirectory(prefix="pim-accel-") as tmp:
        disk, serial = Path(tmp) / "probe.img", Path(tmp) / "serial.log"
        disk.write_bytes(boot_sector())
        argv = [
            qemu_binary(arch), "-machine", f"pc,accel={accel}", "-nodefaults", "-display", "none",
            "-m", "64", "-drive", f"file={disk},format=raw,if=ide", "-serial", f"file:{serial}",
        ]
        return _watch(argv, serial, timeout)


def _probe_start_only(accel: str, arch: str, timeout: float) -> tuple[bool, str]:
    # Non-x86 guests: require QEMU to start and keep running with the accelerator.
    argv = [qemu_binary(arch), "-machine", f"virt,accel={accel}", "-cpu", "host" if accel != "tcg" else "max",
            "-nodefaults", "-display", "none", "-m", "64"]
    proc = start(argv, stdout=DEVNULL, stderr=PIPE)
    try:
        proc.wait(timeout=min(timeout, 2.0))
        return False, _stderr(proc) or "exited"
    except subprocess.TimeoutExpired:
        return True, "started"
    finally:
        _reap(proc)


def _watch(argv: list[str], serial: Path, timeout: float) -> tuple[bool, str]:
    t0 = time.monotonic()
    proc = start(argv, stdout=DEVNULL, stderr=PIPE)
    try:
        until(lambda: serial.exists() and MARKER in serial.read_bytes(), what="the probe guest's marker",
              timeout=timeout, interval=0.05, alive=lambda: proc.poll() is None)
        return True, f"guest ran in {time.monotonic() - t0:.2f}s"
    except WaitAborted:
        err = _stderr(proc)
        return False, f"QEMU exited ({proc.returncode}): {err.splitlines()[-1] if err else 'no message'}"
    except WaitTimeout:
        return False, f"guest made no progress within {timeout:.0f}s (vCPU hung)"
    finally:
        _reap(proc)


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
    """The accelerator to use: `requested` unless it is auto, else the first that works.

    Raises MissingTool when QEMU for arch is not installed.
    """
    if requested != "auto":
        return Verdict(requested, f"set in the config (accel: {requested})", {})
    key = _memo_key(arch)
    memo = _memo_file(arch)
    if not fresh:
        try:
            saved = json.loads(memo.read_text())
            if saved.get("key") == key:
                return Verdict(**saved["verdict"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    tried: dict[str, str] = {}
    chosen, reason = "tcg", "no accelerator worked; TCG emulation (slow)"
    for accel in candidates(arch):
        ok, what = probe_one(accel, arch)
        tried[accel] = ("works: " if ok else "failed: ") + what
        if ok:
            chosen = accel
            reason = f"{accel} works ({what})" if accel != "tcg" else "TCG: " + "; ".join(
                f"{a} {v}" for a, v in tried.items() if a != "tcg"
            ) or "TCG"
            break
    verdict = Verdict(chosen, reason, tried)
    tmp = memo.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"key": key, "verdict": asdict(verdict)}))
    os.replace(tmp, memo)
    return verdict
