from pathlib import Path

from pim.engine.qemu.argv import Firmware, RuntimeFiles, VmConfig, build_argv


def _cfg(tmp_path: Path, **kw) -> VmConfig:
    return VmConfig(name="web", disk=tmp_path / "d.qcow2", serial_log=tmp_path / "s.log",
                    runtime=RuntimeFiles("web", tmp_path / "rt"), **kw)


def _opt(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_runtime_conventions_and_headless(tmp_path: Path) -> None:
    argv = build_argv(_cfg(tmp_path))
    rt = tmp_path / "rt"
    assert argv[0] == "qemu-system-x86_64"
    assert "-daemonize" not in argv
    assert _opt(argv, "-pidfile") == [str(rt / "web.pid")]
    assert _opt(argv, "-qmp") == [f"unix:{rt / 'web.qmp'},server=on,wait=off"]
    chardevs = _opt(argv, "-chardev")
    assert any(f"path={rt / 'web.ga'}" in c for c in chardevs)
    serial = next(c for c in chardevs if "id=serial0" in c)
    assert f"path={rt / 'web.serial'}" in serial and f"logfile={tmp_path / 's.log'}" in serial
    assert any("name=org.qemu.guest_agent.0" in d for d in _opt(argv, "-device"))
    assert _opt(argv, "-display") == ["none"]


def test_accelerator_and_cpu(tmp_path: Path) -> None:
    assert _opt(build_argv(_cfg(tmp_path, accel="tcg")), "-cpu") == ["max"]
    argv = build_argv(_cfg(tmp_path, accel="kvm", cpus=4, memory_mib=4096))
    assert _opt(argv, "-machine") == ["q35,accel=kvm"]
    assert _opt(argv, "-cpu") == ["host"]
    assert _opt(argv, "-smp") == ["4"] and _opt(argv, "-m") == ["4096"]


def test_install_boot(tmp_path: Path) -> None:
    argv = build_argv(_cfg(tmp_path, cdrom=tmp_path / "i.iso", kernel=tmp_path / "k", initrd=tmp_path / "i",
                           append="url=http://10.0.2.2:1/x/answer", no_reboot=True))
    assert _opt(argv, "-kernel") == [str(tmp_path / "k")]
    assert _opt(argv, "-initrd") == [str(tmp_path / "i")]
    assert _opt(argv, "-append") == ["url=http://10.0.2.2:1/x/answer"]
    assert "-no-reboot" in argv
    assert any(str(tmp_path / "i.iso") in d and "media=cdrom" in d for d in _opt(argv, "-drive"))


def test_ssh_forward_listens_on_loopback_only(tmp_path: Path) -> None:
    argv = build_argv(_cfg(tmp_path, ssh_forward=2222))
    assert _opt(argv, "-netdev") == ["user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22"]
    assert "-no-reboot" not in argv and "-kernel" not in argv
    assert "virtio-net-pci,netdev=net0" in _opt(argv, "-device")
    assert "virtio-net-pci,netdev=net0,mac=52:54:00:00:00:0b" in _opt(build_argv(_cfg(tmp_path, mac="52:54:00:00:00:0b")),
                                                                     "-device")


def test_uefi_firmware_and_arm(tmp_path: Path) -> None:
    fw = Firmware(tmp_path / "code.fd", tmp_path / "vars.fd")
    argv = build_argv(_cfg(tmp_path, firmware=fw, arch="aarch64", cdrom=tmp_path / "i.iso"))
    assert argv[0] == "qemu-system-aarch64"
    assert _opt(argv, "-machine") == ["virt,accel=tcg"]
    drives = _opt(argv, "-drive")
    assert f"if=pflash,format=raw,unit=0,readonly=on,file={tmp_path / 'code.fd'}" in drives
    assert f"if=pflash,format=raw,unit=1,file={tmp_path / 'vars.fd'}" in drives
    assert "scsi-cd,drive=cd0,bus=scsi0.0,bootindex=2" in _opt(argv, "-device")


def test_cpu_model_per_arch_accelerator_and_qemu(tmp_path: Path) -> None:
    from pim.engine.qemu.argv import cpu_model

    assert cpu_model("x86_64", "kvm") == cpu_model("aarch64", "hvf") == "host"
    assert cpu_model("x86_64", "tcg", (7, 2)) == "max"
    assert cpu_model("aarch64", "tcg", (7, 2)) == "max,pauth-impdef=on"
    assert cpu_model("aarch64", "tcg", (5, 2)) == cpu_model("aarch64", "tcg") == "max"  # no pauth-impdef before 6.0
    argv = build_argv(_cfg(tmp_path, arch="aarch64", accel="tcg", cpu="max,pauth-impdef=on"))
    assert argv[0] == "qemu-system-aarch64" and _opt(argv, "-cpu") == ["max,pauth-impdef=on"]
    assert _opt(argv, "-machine") == ["virt,accel=tcg"]


def test_build_vms_ignore_the_guests_flushes_and_other_vms_keep_them(tmp_path: Path) -> None:
    """A build VM's disk is a staging file: a crash discards it, and the store fsyncs
    every file it publishes. So its QEMU skips the host fsync a guest's flush asks for
    (cache=unsafe); a VM given no cache mode keeps QEMU's default (writeback)."""
    from pim.engine.config.spec import load_config
    from pim.engine.events import Emitter
    from pim.engine.pipeline.context import BuildContext
    from tests.e2e.conftest import make_config

    iso = tmp_path / "installer.iso"
    iso.write_bytes(b"\0" * 2048)
    cfg = load_config(make_config(tmp_path / "cfg", iso))
    ctx = BuildContext(cfg, cfg.image("e2e"), "e2e", None, Emitter(), iso, "0" * 64, None, "tcg",  # type: ignore[arg-type]
                       tmp_path / "work")
    drive = next(d for d in _opt(build_argv(ctx.vm_config("boot", tmp_path / "d.qcow2")), "-drive") if "id=disk0" in d)
    assert drive.endswith(",cache=unsafe")
    plain = next(d for d in _opt(build_argv(_cfg(tmp_path)), "-drive") if "id=disk0" in d)
    assert "cache=" not in plain
