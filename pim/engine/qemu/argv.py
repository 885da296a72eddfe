"""Pure QEMU command-line construction: a VmConfig in, an argv list out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pim.engine.paths import runtime_dir

GUEST_AGENT_CHANNEL = "org.qemu.guest_agent.0"

_BINARY = {"x86_64": "qemu-system-x86_64", "aarch64": "qemu-system-aarch64"}
_MACHINE = {"x86_64": "q35", "aarch64": "virt"}


@dataclass(frozen=True)
class RuntimeFiles:
    """The runtime conventions: <dir>/<name>.qmp, .ga, .serial, .pid."""

    name: str
    dir: Path

    @classmethod
    def for_name(cls, name: str) -> "RuntimeFiles":
        """The files of VM `name` in `runtime_dir()` (`Machine` checks them with `check`
        before it starts QEMU)."""
        return cls(name, runtime_dir())

    def check(self, platform: str | None = None) -> None:
        """Raises InputError, before any QEMU starts, when a socket path is longer than
        `platform` allows (sun_path: 107 bytes on Linux, 103 on macOS), naming the fix."""
        from pim.engine.errors import InputError
        from pim.engine.platforms import platform_name, socket_path_max, too_long_socket_paths

        long = too_long_socket_paths([self.qmp, self.ga, self.serial], platform)
        if long:
            raise InputError(
                f"the VM's socket {long[0]} is {len(str(long[0]).encode())} bytes long; UNIX sockets on "
                f"{platform_name(platform)} take at most {socket_path_max(platform)}: set XDG_RUNTIME_DIR to a "
                f"shorter folder (unset, PIM uses /tmp/pim) or give the image a shorter name")

    @property
    def qmp(self) -> Path:
        return self.dir / f"{self.name}.qmp"

    @property
    def ga(self) -> Path:
        return self.dir / f"{self.name}.ga"

    @property
    def serial(self) -> Path:
        return self.dir / f"{self.name}.serial"

    @property
    def pid(self) -> Path:
        return self.dir / f"{self.name}.pid"

    def all(self) -> list[Path]:
        return [self.qmp, self.ga, self.serial, self.pid]


@dataclass(frozen=True)
class Firmware:
    """UEFI code (read-only) and this VM's own copy of the variables store."""

    code: Path
    vars: Path


@dataclass(frozen=True)
class VmConfig:
    name: str
    disk: Path
    serial_log: Path
    runtime: RuntimeFiles
    arch: str = "x86_64"
    accel: str = "tcg"
    cpus: int = 2
    memory_mib: int = 2048
    disk_format: str = "qcow2"
    cdrom: Path | None = None
    kernel: Path | None = None
    initrd: Path | None = None
    append: str | None = None
    firmware: Firmware | None = None  # None: the machine's default BIOS
    ssh_forward: int | None = None  # host port on 127.0.0.1 forwarded to guest port 22
    no_reboot: bool = False
    snapshot: bool = False  # discard disk writes (read-only checks of an artifact)
    incoming: str | None = None  # resume a saved machine state (QEMU migration URI)
    cpu: str | None = None  # -cpu; None: `cpu_model(arch, accel)`
    machine: str | None = None  # -machine type and options; None: `machine_type(arch, accel)`
    mac: str | None = None  # the NIC's MAC address ("52:54:00:..."); None: QEMU's default
    disk_cache: str | None = None  # -drive cache= (writeback, unsafe, ...); None: QEMU's default (writeback)
    extra: tuple[str, ...] = field(default=())


def qemu_binary(arch: str) -> str:
    try:
        return _BINARY[arch]
    except KeyError:
        raise ValueError(f"unsupported arch {arch!r}; supported: {', '.join(_BINARY)}") from None


def cpu_model(arch: str, accel: str, qemu: tuple[int, int] | None = None) -> str:
    """-cpu for a guest: `host` under KVM/HVF, `max` under TCG. For aarch64 under TCG
    with QEMU >= 6.0 (`qemu` as (major, minor)), `max,pauth-impdef=on`: pointer
    authentication with QEMU's own cheap algorithm instead of the architected QARMA,
    which is the slowest part of emulating `max` (QEMU's docs, "A-profile CPU
    architecture support", pauth-impdef). None for qemu: not known, plain `max`."""
    if accel in ("kvm", "hvf"):
        return "host"
    if arch == "aarch64" and qemu is not None and qemu >= (6, 0):
        return "max,pauth-impdef=on"
    return "max"


HIGHMEM_OFF_MAX_MIB = 3072  # virt,highmem=off: RAM from 1 GiB up to the 4 GiB line


def machine_type(arch: str, accel: str, qemu: tuple[int, int] | None = None, memory_mib: int = 0) -> str:
    """-machine's type and options (without accel) for a guest.

    aarch64 under HVF with QEMU older than 7.0: `virt,highmem=off`. Apple silicon gives
    a VM a 36-bit IPA space (64 GiB), and virt placed its high PCIe window and
    redistributors above it ("VCPU supports less than 40 bits of IPA space"); QEMU 7.0
    fits the memory map to the CPU's physical address range ("target/arm: Reduced-IPA
    space and highmem=off fixes"). highmem=off keeps RAM below 4 GiB, so it takes at
    most 3 GiB: more raises InputError naming both fixes. `qemu` as (major, minor);
    None (not known) is taken as a current QEMU.
    """
    machine = _MACHINE[arch]
    if arch == "aarch64" and accel == "hvf" and qemu is not None and qemu < (7, 0):
        if memory_mib > HIGHMEM_OFF_MAX_MIB:
            from pim.engine.errors import InputError

            raise InputError(f"memory {memory_mib} MiB: QEMU {qemu[0]}.{qemu[1]} under HVF runs aarch64 guests with "
                             f"virt,highmem=off, which takes at most {HIGHMEM_OFF_MAX_MIB} MiB; set memory: 3G or "
                             "less, or update QEMU to 7.0 or later (brew upgrade qemu)")
        machine += ",highmem=off"
    return machine


def build_argv(cfg: VmConfig) -> list[str]:
    """The QEMU command line for `cfg`, a pure function of it (nothing is started).

    Headless, with QMP, the guest agent channel (`org.qemu.guest_agent.0`), the serial
    console and the pid file at the runtime files' paths; `-cpu host` under KVM/HVF,
    `max` under TCG; user-mode networking with an SSH forward on 127.0.0.1 when
    `cfg.ssh_forward` is set. Raises KeyError for an architecture without a machine type.
    """
    rt = cfg.runtime
    cpu = cfg.cpu or cpu_model(cfg.arch, cfg.accel)
    machine = cfg.machine or machine_type(cfg.arch, cfg.accel, memory_mib=cfg.memory_mib)
    argv = [
        qemu_binary(cfg.arch),
        "-name", cfg.name,
        "-machine", f"{machine},accel={cfg.accel}",
        "-cpu", cpu,
        "-smp", str(cfg.cpus),
        "-m", str(cfg.memory_mib),
        "-nodefaults",
        "-display", "none",
        "-vga", "none",
        "-pidfile", str(rt.pid),
        "-qmp", f"unix:{rt.qmp},server=on,wait=off",
        # The serial console is a socket (for `pim vm console`) and QEMU itself logs
        # everything to serial_log whether or not a client is attached.
        "-chardev", f"socket,id=serial0,path={rt.serial},server=on,wait=off,logfile={cfg.serial_log},logappend=on",
        "-serial", "chardev:serial0",
        "-device", "virtio-serial-pci,id=vser0",
        "-chardev", f"socket,id=ga0,path={rt.ga},server=on,wait=off",
        "-device", f"virtserialport,bus=vser0.0,chardev=ga0,name={GUEST_AGENT_CHANNEL}",
        "-drive", f"file={cfg.disk},if=none,id=disk0,format={cfg.disk_format},discard=unmap,detect-zeroes=unmap"
                  + (f",cache={cfg.disk_cache}" if cfg.disk_cache else ""),
        "-device", "virtio-blk-pci,drive=disk0,bootindex=1",
        "-netdev", _netdev(cfg),
        "-device", "virtio-net-pci,netdev=net0" + (f",mac={cfg.mac}" if cfg.mac else ""),
        "-device", "virtio-rng-pci",
    ]
    if cfg.firmware is not None:
        argv += [
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={cfg.firmware.code}",
            "-drive", f"if=pflash,format=raw,unit=1,file={cfg.firmware.vars}",
        ]
    if cfg.cdrom is not None:
        argv += [
            "-drive", f"file={cfg.cdrom},if=none,id=cd0,media=cdrom,readonly=on",
        ]
        if cfg.arch == "x86_64":
            argv += ["-device", "ide-cd,drive=cd0,bootindex=2"]
        else:  # the arm virt machine has no IDE/AHCI controller
            argv += ["-device", "virtio-scsi-pci,id=scsi0", "-device", "scsi-cd,drive=cd0,bus=scsi0.0,bootindex=2"]
    if cfg.kernel is not None:
        argv += ["-kernel", str(cfg.kernel)]
        if cfg.initrd is not None:
            argv += ["-initrd", str(cfg.initrd)]
        if cfg.append:
            argv += ["-append", cfg.append]
    if cfg.no_reboot:
        argv.append("-no-reboot")
    if cfg.snapshot:
        argv.append("-snapshot")
    if cfg.incoming:
        argv += ["-incoming", cfg.incoming]
    argv += list(cfg.extra)
    return argv


def _netdev(cfg: VmConfig) -> str:
    # User-mode networking: the guest reaches the host's loopback as 10.0.2.2 and
    # nothing listens anywhere but 127.0.0.1.
    spec = "user,id=net0"
    if cfg.ssh_forward is not None:
        spec += f",hostfwd=tcp:127.0.0.1:{cfg.ssh_forward}-:22"
    return spec
