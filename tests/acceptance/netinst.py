#!/usr/bin/env python3
"""A real Debian 12 installer ISO in the official netinst layout, for the acceptance test.

Debian ships its installer as the package debian-installer-12-netboot-amd64; its
text-mode kernel and initrd go to /install.amd/vmlinuz and initrd.gz, beside
isolinux and .disk/info, as on Debian's netinst CD. The initrd is the netboot one:
it loads the rest of the installer (udebs) from the mirror, not from the CD.

    python3 tests/acceptance/netinst.py --cache-dir DIR    # prints the ISO path

Stdlib only. The .deb comes from the host's apt (`apt-get download`), is kept in
the cache dir and reused while apt offers the same file.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGE = "debian-installer-12-netboot-amd64"
IMAGES = Path("usr/lib/debian-installer/images/12/amd64/text")
# Debian's arch name and netinst folder per PIM arch. arm64 netinst CDs keep the kernel in
# /install.a64/ and boot through GRUB's EFI loader; PIM boots the kernel directly, so the
# arm64 ISO carries only the installer's files, no boot record.
ARCHES = {"x86_64": "amd64", "aarch64": "arm64"}
REQUIRED_DEBIAN_PACKAGES = ("xorriso", "isolinux", "syslinux-common")
LAYOUT_VERSION = "1"  # bump when the ISO's layout changes
VOLUME_ID = "Debian 12 amd64 n"  # as Debian's netinst CDs: "Debian 12.x.0 amd64 n"
ISOLINUX_CFG = """default install
prompt 0
timeout 0
label install
  kernel /install.amd/vmlinuz
  append initrd=/install.amd/initrd.gz priority=low ---
"""


class NetinstError(RuntimeError):
    pass


def run(argv: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
        raise NetinstError(f"exit status {proc.returncode}: {' '.join(argv)}\n{tail}")
    return proc.stdout


def _offered(package: str = PACKAGE) -> tuple[str, str] | None:
    """(file name, sha256) of the .deb apt would download now, None if apt knows none."""
    for attempt in range(2):
        out = subprocess.run(["apt-get", "download", "--print-uris", package], capture_output=True, text=True)
        for line in out.stdout.splitlines():
            _url, name, _size, digest = line.split()
            if digest.startswith("SHA256:"):
                return name, digest.split(":", 1)[1]
        if attempt == 0:  # package lists missing: fetch them once
            subprocess.run(["apt-get", "update", "-q"], capture_output=True)
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def installer_deb(cache_dir: Path, package: str = PACKAGE) -> tuple[Path, str]:
    """The installer package (default: the amd64 one) and its sha256, downloaded into
    cache_dir unless the same file is there."""
    offered = _offered(package)
    if offered is None:
        cached = sorted(cache_dir.glob(f"{package}_*.deb"))
        if cached:
            return cached[-1], _sha256(cached[-1])  # offline: whatever was downloaded last
        raise NetinstError(f"apt offers no {package}, even after `apt-get update`")
    name, digest = offered
    deb = cache_dir / name
    if deb.exists() and _sha256(deb) == digest:
        return deb, digest
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        os.chmod(tmp, 0o755)  # apt's sandbox user may write here
        run(["apt-get", "download", "-q", package], cwd=Path(tmp))
        got = Path(tmp) / name
        if not got.exists() or _sha256(got) != digest:
            raise NetinstError(f"apt-get download did not produce {name} with sha256 {digest}")
        os.replace(got, deb)
    for old in cache_dir.glob(f"{package}_*.deb"):
        if old != deb:
            old.unlink()
    return deb, digest


def assemble_arm64(deb: Path, iso: Path) -> None:
    """The arm64 netinst layout (/install.a64/vmlinuz, initrd.gz, .disk/info) from the
    arm64 installer package, written to iso."""
    with tempfile.TemporaryDirectory(dir=iso.parent) as tmp:
        work = Path(tmp)
        run(["dpkg-deb", "-x", str(deb), str(work / "deb")])
        images = work / "deb" / "usr/lib/debian-installer/images/12/arm64/text"
        version = (images / "version.info").read_text().split("Installer build:")[-1].strip()
        tree = work / "iso"
        for d in ("install.a64", ".disk"):
            (tree / d).mkdir(parents=True)
        shutil.copy(images / "debian-installer/arm64/linux", tree / "install.a64/vmlinuz")
        shutil.copy(images / "debian-installer/arm64/initrd.gz", tree / "install.a64/initrd.gz")
        (tree / ".disk/info").write_text(f'Debian GNU/Linux 12 "Bookworm" - Official arm64 NETINST '
                                         f"(installer {version}, assembled from {PACKAGE.replace('amd64', 'arm64')})\n")
        partial = work / "out.iso"
        run(["xorriso", "-as", "mkisofs", "-quiet", "-r", "-J", "-V", "Debian 12 arm64 n", "-o", str(partial),
             str(tree)])
        os.replace(partial, iso)


def assemble(deb: Path, iso: Path) -> None:
    """The netinst-layout ISO from the installer package, written to iso."""
    isolinux_bin = Path("/usr/lib/ISOLINUX/isolinux.bin")
    ldlinux = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32")
    mbr = Path("/usr/lib/ISOLINUX/isohdpfx.bin")
    for needed in (isolinux_bin, ldlinux, mbr):
        if not needed.exists():
            raise NetinstError(f"{needed} is missing: install {' '.join(REQUIRED_DEBIAN_PACKAGES)}")
    with tempfile.TemporaryDirectory(dir=iso.parent) as tmp:
        work = Path(tmp)
        run(["dpkg-deb", "-x", str(deb), str(work / "deb")])
        images = work / "deb" / IMAGES
        version = (images / "version.info").read_text().split("Installer build:")[-1].strip()
        tree = work / "iso"
        for d in ("install.amd", "isolinux", ".disk"):
            (tree / d).mkdir(parents=True)
        shutil.copy(images / "debian-installer/amd64/linux", tree / "install.amd/vmlinuz")
        shutil.copy(images / "debian-installer/amd64/initrd.gz", tree / "install.amd/initrd.gz")
        shutil.copy(isolinux_bin, tree / "isolinux")
        shutil.copy(ldlinux, tree / "isolinux")
        (tree / "isolinux/isolinux.cfg").write_text(ISOLINUX_CFG)
        (tree / ".disk/info").write_text(f'Debian GNU/Linux 12 "Bookworm" - Official amd64 NETINST '
                                         f"(installer {version}, assembled from {PACKAGE})\n")
        partial = work / "out.iso"
        run(["xorriso", "-as", "mkisofs", "-quiet", "-r", "-J", "-V", VOLUME_ID, "-o", str(partial),
             "-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat", "-no-emul-boot", "-boot-load-size", "4",
             "-boot-info-table", "-isohybrid-mbr", str(mbr), str(tree)])
        os.replace(partial, iso)


def build_netinst_iso(cache_dir: Path, arch: str = "x86_64") -> Path:
    """The ISO for `arch` (x86_64 or aarch64) in cache_dir, assembled first if the
    installer package changed."""
    cache_dir = Path(cache_dir).resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    debian_arch = ARCHES[arch]
    package = f"debian-installer-12-netboot-{debian_arch}"
    suffix = "" if arch == "x86_64" else f"-{debian_arch}"
    with open(cache_dir / f".netinst{suffix}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one download and assembly per cache dir at a time
        deb, digest = installer_deb(cache_dir, package)
        key = hashlib.sha256(f"{LAYOUT_VERSION}\0{digest}".encode()).hexdigest()[:16]
        iso = cache_dir / f"debian-12-netinst{suffix}-{key}.iso"
        if not iso.exists():
            (assemble if arch == "x86_64" else assemble_arm64)(deb, iso)
            for old in cache_dir.glob(f"debian-12-netinst{suffix}-*.iso"):
                if old != iso and (suffix or "-arm64-" not in old.name):
                    with contextlib.suppress(OSError):
                        old.unlink()
        return iso


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--cache-dir", type=Path, required=True)
    cli.add_argument("--arch", choices=sorted(ARCHES), default="x86_64")
    try:
        args = cli.parse_args()
        print(build_netinst_iso(args.cache_dir, args.arch))
    except NetinstError as e:
        sys.exit(f"netinst: {e}")
