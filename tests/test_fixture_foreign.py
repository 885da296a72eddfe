"""The arm64 fixture's host-side checks, on small real .deb files made with dpkg-deb
(the real debootstrap and the in-guest second stage run in tests/e2e/test_aarch64_build.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import _fixture_builder


def _deb(folder: Path, package: str, **fields: str) -> None:
    """A real, empty binary package `package` with control `fields` (Depends=..., Provides=...)."""
    root = folder / f"src-{package}"
    (root / "DEBIAN").mkdir(parents=True)
    control = {"Package": package, "Version": "1.0", "Architecture": "arm64", "Maintainer": "PIM tests <t@t>",
               "Description": "test package", **{k.replace("_", "-"): v for k, v in fields.items()}}
    (root / "DEBIAN/control").write_text("".join(f"{k}: {v}\n" for k, v in control.items()))
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(root), str(folder / f"{package}_1.0_arm64.deb")],
                   check=True, capture_output=True)


def test_a_dependency_on_a_virtual_package_nobody_downloaded_fails_before_the_guest(tmp_path: Path) -> None:
    fixture = _fixture_builder()
    debs = tmp_path / "archives"
    debs.mkdir()
    _deb(debs, "python3-cryptography", Depends="python3 (>= 3.11), python3-cffi-backend-api-min (<= 9729)")
    _deb(debs, "python3", Pre_Depends="libc6:any")
    _deb(debs, "libc6")
    _deb(debs, "login", Depends="libpam-runtime | libpam0g")  # one alternative present is enough
    _deb(debs, "libpam0g")
    with pytest.raises(fixture.FixtureBuildError,
                       match=r"python3-cryptography needs python3-cffi-backend-api-min \(<= 9729\)") as caught:
        fixture._check_dependencies(debs)
    assert "login" not in str(caught.value) and "libc6" not in str(caught.value)
    _deb(debs, "python3-cffi-backend", Provides="python3-cffi-backend-api-min (= 9729), python3-cffi-backend-api-9729")
    fixture._check_dependencies(debs)  # provided now: no error


def test_customize_runs_under_the_installers_busybox(tmp_path: Path) -> None:
    """The arm64 installer runs customize.sh with busybox's applets only (the same
    Debian busybox-static, 1.35, as on this host): no GNU option may slip in."""
    fixture = _fixture_builder()
    applets = tmp_path / "bin"
    applets.mkdir()
    for name in subprocess.run(["busybox", "--list"], check=True, capture_output=True, text=True).stdout.split():
        (applets / name).symlink_to("/bin/busybox")
    root = tmp_path / "target"
    for d in ("usr/share/doc/pkg", "usr/share/locale/de", "var/lib/apt/lists", "var/log/apt", "etc/ssh",
              "etc/dpkg/dpkg.cfg.d", "var/lib/dbus", "etc/systemd/system/timers.target.wants", "tmp"):
        (root / d).mkdir(parents=True)
    for f in ("usr/share/doc/pkg/copyright", "usr/share/locale/de/x.mo", "var/lib/apt/lists/Packages",
              "var/log/apt/history.log", "var/log/dpkg.log", "etc/ssh/ssh_host_rsa_key", "var/lib/dbus/machine-id",
              "etc/dpkg/dpkg.cfg.d/pim-fixture-unsafe-io", "etc/systemd/system/timers.target.wants/apt-daily.timer",
              "tmp/.hidden", "etc/machine-id"):
        (root / f).write_text("x\n")
    out = subprocess.run(["/bin/busybox", "sh", str(fixture.HERE / "customize.sh"), str(root)], capture_output=True,
                         text=True, env={"PATH": str(applets), "ROOT_UUID": fixture.ROOT_UUID})
    assert out.returncode == 0, out.stdout + out.stderr
    assert list((root / "usr/share/doc").iterdir()) == [] == list((root / "tmp").iterdir())
    assert (root / "var/log/apt").is_dir() and not (root / "var/log/apt/history.log").exists()
    assert not list((root / "etc/ssh").iterdir()) and not (root / "var/lib/dbus/machine-id").exists()
    assert not (root / "etc/dpkg/dpkg.cfg.d/pim-fixture-unsafe-io").exists()
    assert (root / "etc/machine-id").read_text() == ""
    assert (root / "etc/fstab").read_text() == f"UUID={fixture.ROOT_UUID} / ext4 errors=remount-ro 0 0\n"
    assert not (root / "etc/systemd/system/timers.target.wants/apt-daily.timer").exists()
    assert os.readlink(root / "etc/systemd/system/multi-user.target.wants/systemd-networkd.service") == \
        "/lib/systemd/system/systemd-networkd.service"
