"""What differs between the host platforms PIM runs on (Linux, macOS), kept as data
keyed by `sys.platform` so that every rule is tested for every platform on whichever
host runs the tests.

    socket_path_max("darwin")          -> 103
    tool_dirs("darwin")                -> ("/opt/homebrew/bin", "/usr/local/bin", "/opt/local/bin")
    install_hint("qemu-img", "darwin") -> "brew install qemu"
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

LINUX, MACOS = "linux", "darwin"

# sizeof(sockaddr_un.sun_path), the terminating NUL included: Linux unix(7): 108;
# macOS and the BSDs <sys/un.h>: 104. Unknown platforms get the smaller one.
_SUN_PATH = {LINUX: 108, MACOS: 104}

# Where package managers install programs, searched after PATH: a process started
# from the Dock, an IDE or a Pulumi/Terraform plugin on macOS gets launchd's PATH
# (/usr/bin:/bin:/usr/sbin:/sbin), without Homebrew. Homebrew on Apple silicon, on
# Intel Macs, then MacPorts.
_TOOL_DIRS = {MACOS: ("/opt/homebrew/bin", "/usr/local/bin", "/opt/local/bin")}

# The Homebrew formula behind each program PIM runs on macOS (`brew install <formula>`).
_BREW_FORMULAS = {
    "qemu-system-x86_64": "qemu", "qemu-system-aarch64": "qemu", "qemu-img": "qemu", "qemu-nbd": "qemu",
    "xorriso": "xorriso", "isoinfo": "cdrtools", "ssh": "openssh", "ssh-keygen": "openssh",
}


def arch_name(machine: str | None = None) -> str:
    """`os.uname().machine` (or `machine`) in QEMU's names: "x86_64" or "aarch64" for
    what Linux and macOS call amd64, arm64; anything else as it is, lowercased."""
    machine = (machine or os.uname().machine).lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def platform_name(platform: str | None = None) -> str:
    """`sys.platform` reduced to "linux", "darwin" or itself."""
    platform = platform or sys.platform
    return LINUX if platform.startswith("linux") else platform


def socket_path_max(platform: str | None = None) -> int:
    """The longest UNIX socket path, in bytes, that `bind`/`connect` take on `platform`."""
    return _SUN_PATH.get(platform_name(platform), min(_SUN_PATH.values())) - 1


def tool_dirs(platform: str | None = None) -> tuple[str, ...]:
    """Folders searched for a program after PATH on `platform` (none on Linux)."""
    return _TOOL_DIRS.get(platform_name(platform), ())


def install_hint(tool: str, debian_package: str | None, platform: str | None = None) -> str:
    """How to install `tool` on `platform`: the Homebrew formula on macOS, the Debian
    package elsewhere, or a generic hint when neither is known."""
    name = os.path.basename(tool)
    if platform_name(platform) == MACOS:
        formula = _BREW_FORMULAS.get(name)
        return f"install it: brew install {formula}" if formula else "install it or put it on PATH"
    return f"install it: apt-get install {debian_package}" if debian_package else "install it or put it on PATH"


def too_long_socket_paths(paths: list[Path], platform: str | None = None) -> list[Path]:
    """Those of `paths` that QEMU could not create as UNIX sockets on `platform`."""
    limit = socket_path_max(platform)
    return [p for p in paths if len(os.fsencode(p)) > limit]
