"""Shared values and fixture builders for the installer tests."""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
from pathlib import Path

# Shaped like an ed25519 public key; no private half exists.
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHs2W2tqg4c1d9sEJrPiNTpnKTSGnrmHDV1aV2kqdmSX pim-build-test"
PASSWORD = "Tr0ub4dor&3-hunter2"  # long enough that a chance match elsewhere is impossible

# Placeholders only: example.* names are reserved and are no real registry.
MIRRORS = {
    "debian": "http://mirror.example/debian",
    "ubuntu": "http://mirror.example/ubuntu",
    "kickstart": "http://mirror.example/rocky/9/BaseOS/x86_64/os/",
}
PROXY = "http://10.0.2.2:3128"


def variables(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {"hostname": "web1", "ssh_public_key": KEY}
    base.update(overrides)
    return base


# Each option value appears at least once, with the others varied (pairwise-style).
CASES = [
    dict(firmware="bios", ssh_user="root", ssh_password=None, proxy_url="", mirror=False),
    dict(firmware="uefi", ssh_user="admin", ssh_password=PASSWORD, proxy_url=PROXY, mirror=True),
    dict(firmware="bios", ssh_user="admin", ssh_password=None, proxy_url=PROXY, mirror=False),
    dict(firmware="uefi", ssh_user="root", ssh_password=PASSWORD, proxy_url="", mirror=True),
    dict(firmware="bios", ssh_user="root", ssh_password=PASSWORD, proxy_url=PROXY, mirror=True),
    dict(firmware="uefi", ssh_user="admin", ssh_password=None, proxy_url="", mirror=False),
]


def case_id(case: dict) -> str:
    return "-".join([case["firmware"], case["ssh_user"], "password" if case["ssh_password"] else "key",
                     "proxy" if case["proxy_url"] else "direct", "mirror" if case["mirror"] else "default"])


@functools.lru_cache(maxsize=None)
def _files(family: str, items: tuple) -> dict[str, bytes]:
    from pim.engine.installers.families import default_files

    return default_files(family, dict(items))


def case_files(family: str, case: dict) -> dict[str, bytes]:
    """The family's default files for a case, rendered once per test session (hashing is slow on purpose)."""
    options = {k: v for k, v in case.items() if k != "mirror"}
    values = variables(mirror=MIRRORS[family] if case["mirror"] else "", **options)
    return dict(_files(family, tuple(sorted(values.items()))))


def host_debian_mirror() -> str | None:
    """The Debian mirror the host's apt uses (read at run time, never written down)."""
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if not path.is_file() or path.suffix not in ("", ".list", ".sources"):
            continue
        for line in path.read_text(errors="replace").splitlines():
            words = line.replace("URIs:", "").split()
            for word in words:
                if word.startswith(("http://", "https://")) and word.rstrip("/").endswith("/debian"):
                    return word.rstrip("/")
    return None


def make_iso(dest: Path, volume_id: str, files: list[str], tool: str = "pycdlib") -> Path:
    """An ISO with the given volume id and (tiny dummy) files at the given absolute paths."""
    if tool == "xorriso":
        tree = dest.with_suffix(".tree")
        for name in files:
            path = tree / name.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f"dummy {name}\n".encode())
        subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-V", volume_id, "-J", "-joliet-long", "-R",
                        "-o", str(dest), str(tree)], check=True, capture_output=True)
        shutil.rmtree(tree)
        return dest
    import pycdlib

    cd = pycdlib.PyCdlib()
    cd.new(interchange_level=4, vol_ident=volume_id, rock_ridge="1.09")  # Rock Ridge names only
    # ISO 9660 needs names of its own (D00001, F00001); every reader here uses Rock Ridge's.
    iso_of = {"": ""}
    dirs = sorted({"/".join(name.strip("/").split("/")[:d]) for name in files
                   for d in range(1, name.strip("/").count("/") + 1)}, key=lambda d: d.count("/"))
    for directory in dirs:
        parent, _, leaf = directory.rpartition("/")
        iso_of[directory] = f"{iso_of[parent]}/D{len(iso_of):05d}"
        cd.add_directory(iso_of[directory], rr_name=leaf)
    for index, name in enumerate(files):
        parent, _, leaf = name.strip("/").rpartition("/")
        data = f"dummy {name}\n".encode()
        cd.add_fp(io.BytesIO(data), len(data), f"{iso_of[parent]}/F{index:05d}.;1", rr_name=leaf)
    cd.write(str(dest))
    cd.close()
    return dest
