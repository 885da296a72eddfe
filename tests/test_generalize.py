"""The generalize script run for real (POSIX sh, and busybox's applets alone) on
stand-in roots laid out as Ubuntu, Debian and RHEL installers leave them: what must
go, what must stay, and what a clone needs when cloud-init is off."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pim.engine.pipeline.guestfiles import GENERALIZE

BUILD_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBuild pim-build-0123456789ab"
USER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIUser someone@laptop"

# path -> content: what an installer (subiquity and curtin, d-i, anaconda) leaves behind
INSTALLED = {
    "etc/cloud/cloud.cfg.d/99-installer.cfg": "datasource_list: [None]\n",
    "etc/cloud/cloud.cfg.d/subiquity-disable-cloudinit-networking.cfg": "network: {config: disabled}\n",
    "etc/cloud/cloud.cfg.d/90-installer-network.cfg": "network: {version: 2}\n",
    "etc/cloud/cloud.cfg.d/curtin-preserve-sources.cfg": "apt: {preserve_sources_list: true}\n",
    "etc/cloud/cloud.cfg.d/05_logging.cfg": "# the package's own: stays\n",
    "etc/cloud/cloud-init.disabled": "",
    "etc/netplan/00-installer-config.yaml": "network:\n  ethernets:\n    ens3:\n      match: {macaddress: '52:54:00:12:34:56'}\n",
    "etc/netplan/50-cloud-init.yaml": "network: {ethernets: {ens3: {dhcp4: true}}}\n",
    "etc/NetworkManager/system-connections/ens3.nmconnection": "[ethernet]\nmac-address=52:54:00:12:34:56\nmtu=1500\n",
    "etc/sysconfig/network-scripts/ifcfg-eth0": "DEVICE=eth0\nHWADDR=52:54:00:12:34:56\nBOOTPROTO=dhcp\n",
    "etc/udev/rules.d/70-persistent-net.rules": "SUBSYSTEM==\"net\", ATTR{address}==\"52:54:00:12:34:56\"\n",
    "var/lib/dhcp/dhclient.ens3.leases": "lease {}\n",
    "var/lib/NetworkManager/internal-1234-ens3.lease": "ADDRESS=10.0.2.15\n",
    "var/lib/systemd/random-seed": "seed",
    "var/lib/systemd/credential.secret": "secret",
    "var/lib/cloud/instances/build/obj.pkl": "x",
    "var/log/cloud-init.log": "log\n",
    "var/log/installer/autoinstall-user-data": "password: $6$build-hash\n",
    "var/log/syslog": "Nov 29 the build's log\n",
    "var/log/syslog.1": "older\n",
    "var/log/apt/history.log.2.gz": "gz",
    "var/log/journal/0123/system.journal": "JOURNAL",
    "var/cache/apt/archives/hello_2.10-3_amd64.deb": "deb",
    "etc/machine-id": "0123456789abcdef0123456789abcdef\n",
    "var/lib/dbus/machine-id": "0123456789abcdef0123456789abcdef\n",
    "etc/ssh/ssh_host_ed25519_key": "KEY", "etc/ssh/ssh_host_ed25519_key.pub": "PUB",
    "etc/ssh/sshd_config": "PermitRootLogin prohibit-password\n",
    "lib/systemd/system/ssh.service": "[Service]\nExecStartPre=/usr/sbin/sshd -t\n",
    "root/.ssh/authorized_keys": f"{USER_KEY}\n{BUILD_KEY}\n",
    "home/debian/.ssh/authorized_keys": f"{BUILD_KEY}\n",
    "root/.bash_history": "history\n", "home/debian/.bash_history": "history\n",
    "tmp/leftover": "x", "var/tmp/leftover/file": "x", "tmp/pim-generalize": "#!/bin/sh\n",
}
# with cloud-init on: the installer's settings for its own run of cloud-init
CLOUD_GONE = [
    "etc/cloud/cloud.cfg.d/99-installer.cfg", "etc/cloud/cloud.cfg.d/subiquity-disable-cloudinit-networking.cfg",
    "etc/cloud/cloud.cfg.d/90-installer-network.cfg", "etc/cloud/cloud.cfg.d/curtin-preserve-sources.cfg",
    "etc/cloud/cloud-init.disabled"]
# on or off: the build VM's cloud-init instance and logs (the stand-in has cloud-init installed)
CLOUD_STATE_GONE = ["var/lib/cloud/instances", "var/log/cloud-init.log"]
GONE = [
    "etc/netplan/00-installer-config.yaml", "etc/netplan/50-cloud-init.yaml",
    "etc/udev/rules.d/70-persistent-net.rules", "var/lib/dhcp/dhclient.ens3.leases",
    "var/lib/NetworkManager/internal-1234-ens3.lease", "var/lib/systemd/random-seed",
    "var/lib/systemd/credential.secret", "var/log/installer", "var/log/syslog.1", "var/log/apt/history.log.2.gz",
    "var/cache/apt/archives/hello_2.10-3_amd64.deb", "var/lib/dbus/machine-id", "etc/ssh/ssh_host_ed25519_key",
    "etc/ssh/ssh_host_ed25519_key.pub", "root/.bash_history", "home/debian/.bash_history",
    "tmp/leftover", "var/tmp/leftover",
]


def lay_out(root: Path) -> None:
    for rel, content in INSTALLED.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    (root / "etc/systemd/system").mkdir(parents=True)


def generalize(root: Path, tmp: Path, cloud_init: bool, shell: list[str], path: str) -> str:
    script = tmp / "generalize.sh"
    script.write_text(GENERALIZE)
    env = {"PATH": path, "PIM_ROOT": str(root), "PIM_CLOUD_INIT": "1" if cloud_init else "0", "PIM_TRIM": "1",
           "PIM_KEY_COMMENT": "pim-build-0123456789ab"}
    proc = subprocess.run([*shell, str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def busybox_path(tmp: Path) -> str:
    """A PATH of nothing but busybox's applets (as a minimal guest has)."""
    bb = shutil.which("busybox")
    assert bb is not None, "busybox is missing: `make test` installs busybox-static"
    bin_ = tmp / "bb"
    bin_.mkdir()
    for applet in subprocess.run([bb, "--list"], capture_output=True, text=True, check=True).stdout.split():
        os.symlink(bb, bin_ / applet)
    return str(bin_)


@pytest.mark.parametrize("shell", ["sh", "busybox"])
@pytest.mark.parametrize("cloud_init", [True, False], ids=["cloud-init", "no-cloud-init"])
def test_an_installed_root_is_generalized(tmp_path: Path, shell: str, cloud_init: bool) -> None:
    root = tmp_path / "root"
    lay_out(root)
    if shell == "sh":
        out = generalize(root, tmp_path, cloud_init, ["sh"], os.environ["PATH"])
    else:
        out = generalize(root, tmp_path, cloud_init, ["busybox", "sh"], busybox_path(tmp_path))
    left = [rel for rel in GONE + CLOUD_STATE_GONE + (CLOUD_GONE if cloud_init else []) if (root / rel).exists()]
    assert left == [], out
    if not cloud_init:  # off: the installer's settings that keep cloud-init inert stay
        assert (root / "etc/cloud/cloud-init.disabled").exists()
    # identity: machine-id empty (a clone makes its own at first boot), host keys gone
    assert (root / "etc/machine-id").read_text() == ""
    # the build key is gone, the user's own stays
    assert (root / "root/.ssh/authorized_keys").read_text() == f"{USER_KEY}\n"
    assert (root / "home/debian/.ssh/authorized_keys").read_text() == ""
    # MAC bindings go, the rest of the connection stays
    assert (root / "etc/NetworkManager/system-connections/ens3.nmconnection").read_text() == "[ethernet]\nmtu=1500\n"
    assert (root / "etc/sysconfig/network-scripts/ifcfg-eth0").read_text() == "DEVICE=eth0\nBOOTPROTO=dhcp\n"
    # logs emptied, the journal left to journalctl, packages' own settings kept
    assert (root / "var/log/syslog").read_text() == ""
    assert (root / "var/log/journal/0123/system.journal").read_text() == "JOURNAL"
    assert (root / "etc/cloud/cloud.cfg.d/05_logging.cfg").exists()
    assert (root / "tmp/pim-generalize").exists()  # the script itself: PIM removes it after the run
    unit = root / "etc/systemd/system/pim-ssh-host-keys.service"
    netplan = root / "etc/netplan/01-pim-dhcp.yaml"
    if cloud_init:  # cloud-init makes the keys and the network config of each clone
        assert not unit.exists() and not netplan.exists()
    else:  # nothing else would: a first-boot unit for the keys, DHCP on every NIC
        assert "ExecStart=/usr/bin/ssh-keygen -A" in unit.read_text() and "Before=ssh.service" in unit.read_text()
        assert os.readlink(root / "etc/systemd/system/multi-user.target.wants/pim-ssh-host-keys.service") == \
            "/etc/systemd/system/pim-ssh-host-keys.service"
        assert 'match: {name: "e*"}' in netplan.read_text() and oct(netplan.stat().st_mode)[-3:] == "600"
    assert "trimming" not in out  # fstrim acts on the running system only


def test_a_distribution_that_makes_its_own_host_keys_gets_no_unit(tmp_path: Path) -> None:
    root = tmp_path / "root"
    lay_out(root)
    (root / "lib/systemd/system/ssh.service").write_text("[Unit]\nWants=sshd-keygen.target\n")  # RHEL's sshd
    generalize(root, tmp_path, False, ["sh"], os.environ["PATH"])
    assert not (root / "etc/systemd/system/pim-ssh-host-keys.service").exists()
