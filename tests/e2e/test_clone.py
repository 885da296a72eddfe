"""Proof that the image is generic: two clones of the fixture build, each booted with
its own NoCloud seed (a cidata ISO with its own hostname and user key) and its own
MAC, checked through the guest agent and SSH. cloud-init must have used NoCloud and
applied the seed; machine-ids and SSH host keys must differ between the clones and
from the build VM's; networking must come up by DHCP."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import paramiko
import pytest

from pim.engine.config.spec import load_config
from pim.engine.events import Emitter
from pim.engine.installers.seed import build_seed_iso
from pim.engine.pipeline.build import build
from pim.engine.pipeline.context import free_port
from pim.engine.qemu import img
from pim.engine.qemu.argv import RuntimeFiles, VmConfig
from pim.engine.qemu.machine import Machine
from pim.engine.store.objects import Store
from tests.e2e.conftest import make_config

pytestmark = pytest.mark.e2e

# The build VM's identity, recorded in the image so the clones can be compared with it.
RECORD = {"type": "shell", "name": "record-build-identity", "inline":
          "mkdir -p /root/build-identity && cd /root/build-identity && cat /etc/machine-id > machine-id && "
          "cat /etc/ssh/ssh_host_ed25519_key.pub > host-key && "
          "(sha256sum /var/lib/systemd/random-seed 2>/dev/null || true) > random-seed"}
# What installers and the build VM leave behind (subiquity/curtin cloud-init settings, network
# bound to the build VM's MAC, leases, the installer's logs, history, package caches),
# planted before generalization so the clones can show that none of it remains.
MARK = "pim-build-leftover"
LEFTOVERS = {
    "/etc/cloud/cloud.cfg.d/99-installer.cfg": "datasource_list: [ None ]",
    "/etc/cloud/cloud.cfg.d/subiquity-disable-cloudinit-networking.cfg": "network: {config: disabled}",
    "/etc/cloud/cloud.cfg.d/90-installer-network.cfg": "network: {version: 2}",
    "/etc/cloud/cloud.cfg.d/curtin-preserve-sources.cfg": "apt: {preserve_sources_list: true}",
    "/etc/netplan/00-installer-config.yaml": "network: {version: 2, ethernets: {build: {match: "
                                             "{macaddress: '52:54:00:12:34:56'}, dhcp4: true}}}",
    "/etc/udev/rules.d/70-persistent-net.rules": "SUBSYSTEM==\"net\", ATTR{address}==\"52:54:00:12:34:56\"",
    "/var/lib/dhcp/dhclient.ens3.leases": "lease { fixed-address 10.0.2.15; }",
    "/var/log/installer/autoinstall-user-data": "#cloud-config",
    "/root/.bash_history": "history",
    "/var/cache/apt/archives/leftover.deb": "deb",
}
PLANT = " && ".join(f"mkdir -p {Path(p).parent} && printf '%s\\n# %s\\n' \"{body}\" {MARK} > {p}"
                    for p, body in LEFTOVERS.items())
CLONES = {"a": "52:54:00:00:0c:0a", "b": "52:54:00:00:0c:0b"}


PLANT_STEP = {"type": "shell", "name": "plant-installer-leftovers", "inline": PLANT}


@pytest.fixture(scope="module")
def image(fixture_iso: Path, tmp_path_factory: pytest.TempPathFactory, pim_cache: Path, module_pim_env: None) -> Path:
    cfg = load_config(make_config(tmp_path_factory.mktemp("clone-image"), fixture_iso,
                                  provision=[RECORD, PLANT_STEP]))
    return build(cfg, "e2e", Emitter(), store=Store(pim_cache)).path


class Clone:
    """One clone: an overlay of the image, its own seed ISO, MAC and SSH port."""

    def __init__(self, name: str, image: Path, folder: Path):
        self.name, self.hostname = name, f"clone-{name}"
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        (folder / f"{name}.key").write_bytes(Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
        self.key = paramiko.Ed25519Key.from_private_key_file(str(folder / f"{name}.key"))
        public = f"{self.key.get_name()} {self.key.get_base64()} test@{self.hostname}"
        user_data = ("#cloud-config\n" + json.dumps({
            "hostname": self.hostname,
            "locale": False,  # the fixture's minimal Debian has no locales package to configure
            "users": [{"name": "clone", "shell": "/bin/sh", "ssh_authorized_keys": [public]}],
        })).encode()
        meta = f"instance-id: {self.hostname}\nlocal-hostname: {self.hostname}\n".encode()
        self.seed = build_seed_iso({"user-data": user_data, "meta-data": meta}, folder / f"{name}-seed.iso")
        self.disk = folder / f"{name}.qcow2"
        img.create(self.disk, "4G", backing=image)
        self.port = free_port()
        self.cfg = VmConfig(name=f"clone-{name}", disk=self.disk, serial_log=folder / f"{name}.serial.log",
                            runtime=RuntimeFiles.for_name(f"clone-{name}"), memory_mib=1024,
                            ssh_forward=self.port, mac=CLONES[name],
                            # the seed as a virtio disk, as clouds attach one: cloud-init's generator
                            # looks for it early in boot, before a CD-ROM driver would be loaded
                            extra=("-drive", f"file={self.seed},if=virtio,format=raw,readonly=on"))
        self.facts: dict[str, object] = {}
        self.error: BaseException | None = None

    def boot_and_inspect(self) -> None:
        try:
            with Machine(self.cfg, Emitter(), "clone") as vm:
                agent = vm.agent(timeout=300)
                self.facts = self._inspect(agent)
                self.facts["ssh"] = self._ssh()
                self.facts["shutdown"] = vm.stop(graceful=120)
        except BaseException as e:  # reported by the test, with the console
            self.error = e

    def _inspect(self, agent) -> dict[str, object]:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + 420
        while True:  # cloud-init's last stage writes result.json
            code, _, _ = agent.exec(["/usr/bin/test", "-f", "/run/cloud-init/result.json"])
            if code == 0:
                break
            assert time.monotonic() < deadline, f"{self.name}: cloud-init did not finish in 420 s"
            time.sleep(3)

        def read(path: str) -> str:
            return agent.file_read(path).decode()

        _, addrs, _ = agent.exec(["/usr/sbin/ip", "-4", "-o", "addr", "show"])
        _, links, _ = agent.exec(["/usr/sbin/ip", "-o", "link", "show"])
        _, host, _ = agent.exec(["/usr/bin/hostname"])
        _, seed, _ = agent.exec(["/usr/bin/sha256sum", "/var/lib/systemd/random-seed"])
        # the mark split in two, so this command's own line does not hold it
        look = (f"ls -d {' '.join(LEFTOVERS)} 2>/dev/null; "
                f"m={MARK[:5]}; grep -rlI \"$m{MARK[5:]}\" /etc /var /root /home /tmp 2>/dev/null; true")
        _, left, _ = agent.exec(["/bin/sh", "-c", look])
        return {
            "result": json.loads(read("/run/cloud-init/result.json"))["v1"],
            "hostname": host.decode().strip(),
            "machine_id": read("/etc/machine-id").strip(),
            "host_key": read("/etc/ssh/ssh_host_ed25519_key.pub").split()[1],
            "random_seed": seed.decode().split()[0] if seed else "",
            "addrs": addrs.decode(), "links": links.decode(), "leftovers": left.decode().split(),
            "build": {n: read(f"/root/build-identity/{n}").strip() for n in ("machine-id", "host-key", "random-seed")},
        }

    def _ssh(self) -> dict[str, str]:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        client.connect("127.0.0.1", port=self.port, username="clone", pkey=self.key, timeout=30,
                       allow_agent=False, look_for_keys=False, banner_timeout=60, auth_timeout=60)
        try:
            _, out, _ = client.exec_command("id -un; hostname")
            lines = out.read().decode().split()
            server_key = client.get_transport().get_remote_server_key().get_base64()
        finally:
            client.close()
        return {"user": lines[0], "hostname": lines[1], "host_key": server_key}


@pytest.fixture(scope="module")
def clones(image: Path, tmp_path_factory: pytest.TempPathFactory, module_pim_env: None) -> dict[str, Clone]:
    folder = tmp_path_factory.mktemp("clones")
    made = {name: Clone(name, image, folder) for name in CLONES}
    threads = [threading.Thread(target=c.boot_and_inspect) for c in made.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in made.values():
        if c.error is not None:
            console = c.cfg.serial_log.read_text(errors="replace")[-3000:] if c.cfg.serial_log.exists() else ""
            raise AssertionError(f"clone {c.name}: {c.error!r}\n--- console\n{console}") from c.error
    return made


def test_cloud_init_used_the_nocloud_seed_and_applied_it(clones: dict[str, Clone]) -> None:
    for c in clones.values():
        result = c.facts["result"]
        assert "NoCloud" in result["datasource"] and result["errors"] == [], result
        assert c.facts["hostname"] == c.hostname
        # the seed's user and key log in over SSH; the host answers with its own new key
        assert c.facts["ssh"] == {"user": "clone", "hostname": c.hostname, "host_key": c.facts["host_key"]}


def test_each_clone_has_its_own_identity(clones: dict[str, Clone]) -> None:
    a, b = clones["a"].facts, clones["b"].facts
    build = a["build"]
    assert build == b["build"] and len(build["machine-id"]) == 32  # the same image, made by one build VM
    assert len(a["machine_id"]) == len(b["machine_id"]) == 32
    assert len({a["machine_id"], b["machine_id"], build["machine-id"]}) == 3
    assert len({a["host_key"], b["host_key"], build["host-key"].split()[1]}) == 3
    if build["random-seed"]:
        assert build["random-seed"].split()[0] not in (a["random_seed"], b["random_seed"])


def test_networking_came_up_by_dhcp_on_each_clones_own_mac(clones: dict[str, Clone]) -> None:
    for c in clones.values():
        assert CLONES[c.name] in c.facts["links"]
        assert any("10.0.2.15/24" in line and "dynamic" in line for line in str(c.facts["addrs"]).splitlines()), \
            c.facts["addrs"]
    assert {c.facts["shutdown"] for c in clones.values()} <= {"guest agent shutdown", "ACPI powerdown"}


def test_no_installer_or_build_vm_file_remains(clones: dict[str, Clone]) -> None:
    for c in clones.values():
        assert c.facts["leftovers"] == [], f"clone {c.name} still has {c.facts['leftovers']}"


def test_a_clone_of_an_image_built_without_cloud_init_gets_its_own_identity(
        fixture_iso: Path, tmp_path_factory: pytest.TempPathFactory, pim_cache: Path, module_pim_env: None) -> None:
    """finalize.cloud_init: false. Nothing in the image makes a clone's identity but what
    generalization leaves: systemd's first-boot machine-id, PIM's first-boot host-key unit
    (Debian's sshd makes none), and networking by DHCP on whatever NIC the clone has."""
    folder = tmp_path_factory.mktemp("no-cloud-init")
    # a cloud-init instance of the build VM, as an installer's run of cloud-init leaves one
    instance = {"type": "shell", "name": "build-vm-cloud-init-instance", "inline":
                "mkdir -p /var/lib/cloud/instances/build-vm && echo build-vm > /var/lib/cloud/instances/build-vm/iid"
                " && echo ran > /var/log/cloud-init.log"}
    cfg = load_config(make_config(folder, fixture_iso, name="plain", provision=[RECORD, instance],
                                  finalize={"cloud_init": False}))
    built = build(cfg, "plain", Emitter(), store=Store(pim_cache)).path
    disk, port, mac = folder / "clone.qcow2", free_port(), "52:54:00:00:0c:0c"
    img.create(disk, "4G", backing=built)
    vm_cfg = VmConfig(name="clone-plain", disk=disk, serial_log=folder / "serial.log",
                      runtime=RuntimeFiles.for_name("clone-plain"), memory_mib=1024, ssh_forward=port, mac=mac)
    with Machine(vm_cfg, Emitter(), "clone") as vm:
        agent = vm.agent(timeout=300)
        deadline = time.monotonic() + 300
        while agent.exec(["/usr/bin/test", "-s", "/etc/ssh/ssh_host_ed25519_key.pub"])[0] != 0:
            assert time.monotonic() < deadline, "no SSH host key was made at first boot"
            time.sleep(2)
        key = agent.file_read("/etc/ssh/ssh_host_ed25519_key.pub").decode().split()[1]
        machine_id = agent.file_read("/etc/machine-id").decode().strip()
        build_id = {n: agent.file_read(f"/root/build-identity/{n}").decode().strip() for n in ("machine-id", "host-key")}
        _, addrs, _ = agent.exec(["/usr/sbin/ip", "-4", "-o", "addr", "show"])
        # the fixture's installer put cloud-init in; off, PIM still forgets the build VM's instance
        _, left, _ = agent.exec(["/bin/sh", "-c", "ls -d /var/lib/cloud/instances/build-vm 2>/dev/null; "
                                 "grep -l '^ran$' /var/log/cloud-init.log 2>/dev/null; true"])
        transport = paramiko.Transport(("127.0.0.1", port))
        try:  # sshd answers with the clone's own key (no login: the build key is gone, and no seed adds one)
            transport.start_client(timeout=60)
            served = transport.get_remote_server_key().get_base64()
        finally:
            transport.close()
        vm.stop(graceful=120)
    assert left.decode().split() == []  # no clone takes itself for the build VM
    assert len(machine_id) == 32 and machine_id != build_id["machine-id"]
    assert key != build_id["host-key"].split()[1] and served == key
    assert any("10.0.2.15/24" in line and "dynamic" in line for line in addrs.decode().splitlines()), addrs
