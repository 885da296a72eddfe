"""PIM against Packer 1.6.6's qemu builder on the same ISO and answer file.

Both build the e2e fixture ISO with the answer file the e2e tests use, one shell
step, qcow2 output with compression, same accelerator, CPUs, memory and disk size,
one run each on this machine. PIM starts with an empty cache.

Packer boots the installer as PIM does (kernel and initrd read out of the ISO, given
to QEMU through `qemuargs`; the answer file from its `http_directory`). The fixture
installer powers off when done; Packer's ssh communicator expects an installer that
reboots into the new system, and a powered-off QEMU leaves it waiting for SSH until
`ssh_timeout`. So the Packer side is the two builds a Packer user writes for such an
installer, timed together: an install build with `communicator: none` (Packer waits
for the guest to power off) and a build from that disk (`disk_image`) with the ssh
communicator, the shell provisioner and `disk_compression`. That build copies the
disk: Packer 1.6.6's `use_backing_file` runs `qemu-img create -b` without a backing
format, which QEMU 7 refuses. Packer's fixed 10 s `boot_wait` costs nothing here: the
guest runs while Packer waits.

Same virtual hardware as PIM: q35, `-cpu max`, virtio disk and NIC. Packer's own SSH
forward listens on every interface; here the -netdev is replaced to bind it to
127.0.0.1. Not the same, by design of each tool: PIM generalizes the guest
(cloud-init clean, machine-id, host keys, build key, fstrim) and saves a boot
snapshot; Packer runs only the step. PIM compresses with zstd where qemu-img has it,
Packer with zlib (`qemu-img convert -c`). PIM runs first, then Packer; other QEMUs
on the machine share its CPUs, so the load average is printed for the start and end.

Each run prints PIM's figures from its events (the phases of every stage, the time
QEMU ran, PIM's own overhead: wall time minus that) beside Packer's, and the floor:
the faster install VM plus the faster boot from VM start to sshd of the two tools in
that run, the guest's own pace. The summary gives PIM / Packer per run and the median.

    cd bench && ../.venv/bin/python packer_bench.py [--runs 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jinja2
from common import ROOT, fixture_iso, make_config, pim, timed

from pim.engine.pipeline.context import hostname_for  # noqa: E402
from pim.engine.pipeline.keys import file_digest  # noqa: E402
from tests.e2e.conftest import ANSWER, DIRECT_BOOT  # noqa: E402

PACKER_VERSION = "1.6.6"
IMAGE = "e2e"
STEP = "echo packer-bench > /root/bench-step && sync"
ANSWER_URL = "http://{{ .HTTPIP }}:{{ .HTTPPort }}/answer.txt"


def ensure_packer() -> str:
    """The packer binary, installed from the Debian package when missing."""
    if not shutil.which("packer"):
        subprocess.run([str(ROOT / "scripts/ensure-debs"), "packer"], check=True)
    out = subprocess.run(["packer", "version"], capture_output=True, text=True, check=True).stdout
    if PACKER_VERSION not in out:
        sys.exit(f"this benchmark drives Packer {PACKER_VERSION}; found: {out.strip()}")
    return out.split()[1]


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run_pim(folder: Path, iso: Path) -> tuple[float, Path, dict, list[dict]]:
    """(wall seconds, artifact, manifest, events) of one cold `pim build --json`."""
    cfg = make_config(folder / "pim", iso, provision=[{"type": "shell", "name": "step", "inline": STEP}])
    env = {"PIM_CACHE_DIR": str(folder / "pim-cache"), "XDG_RUNTIME_DIR": str(folder / "pim-run")}
    (folder / "pim-run").mkdir(mode=0o700)
    try:
        wall, out = timed(lambda: pim("build", IMAGE, "-c", str(cfg), "--json", env=env))
    except subprocess.CalledProcessError as e:
        (folder / "pim-events.jsonl").write_text(e.stdout)
        sys.exit(f"pim build failed (exit {e.returncode}; --keep DIR keeps pim-events.jsonl):\n"
                 + "\n".join(e.stderr.splitlines()[-30:]))
    (folder / "pim-events.jsonl").write_text(out.stdout)
    events = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    done = events[-1]
    manifest = json.loads(Path(done["data"]["manifest"]).read_text())
    return wall, Path(done["data"]["path"]), manifest, events


def extract_boot_files(iso: Path, dest: Path) -> tuple[Path, Path]:
    kernel, initrd = dest / "vmlinuz", dest / "initrd.gz"
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(iso),
                    "-extract", DIRECT_BOOT["kernel"], str(kernel),
                    "-extract", DIRECT_BOOT["initrd"], str(initrd)], check=True, capture_output=True)
    return kernel, initrd


def machine(inputs: dict, accel: str) -> dict:
    """The builder settings both Packer builds share, from the inputs in PIM's manifest."""
    return {
        "type": "qemu",
        "accelerator": accel,
        "machine_type": "q35",
        "cpus": inputs["cpus"],
        "memory": inputs["memory"] >> 20,
        "disk_size": f"{inputs['disk_size'] >> 20}M",
        "format": "qcow2",
        "disk_interface": "virtio",
        "net_device": "virtio-net",
        "headless": True,
    }


def packer_templates(work: Path, iso: Path, inputs: dict, accel: str) -> tuple[Path, Path, Path]:
    """(install template, provision template, artifact path), written into work."""
    boot = work / "boot"
    boot.mkdir()
    kernel, initrd = extract_boot_files(iso, boot)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "packer-bench", "-f", str(work / "key")],
                   check=True)
    http = work / "http"
    http.mkdir()
    (http / "answer.txt").write_text(jinja2.Template(ANSWER).render(
        hostname=hostname_for(IMAGE), ssh_public_key=(work / "key.pub").read_text().strip()))
    params = DIRECT_BOOT["params"].replace("{{ answer_url }}", ANSWER_URL)
    install = {"builders": [{
        **machine(inputs, accel),
        "vm_name": "install.qcow2",
        "output_directory": str(work / "install-out"),
        "iso_url": str(iso),
        "iso_checksum": f"sha256:{file_digest(iso)}",
        "http_directory": str(http),
        "http_bind_address": "127.0.0.1",
        "communicator": "none",
        "shutdown_timeout": "15m",
        "skip_compaction": True,
        "qemuargs": [["-cpu", "max"], ["-kernel", str(kernel)], ["-initrd", str(initrd)], ["-append", params],
                     ["-serial", f"file:{work / 'install-console.log'}"]],
    }]}
    provision = {
        "builders": [{
            **machine(inputs, accel),
            "vm_name": "packer.qcow2",
            "output_directory": str(work / "out"),
            "iso_url": str(work / "install-out/install.qcow2"),
            "iso_checksum": "none",
            "disk_image": True,
            "communicator": "ssh",
            "ssh_username": inputs["ssh"]["user"],
            "ssh_private_key_file": str(work / "key"),
            "ssh_timeout": "10m",
            "shutdown_command": "poweroff",
            "disk_compression": True,
            "qemuargs": [["-cpu", "max"],
                         ["-netdev", "user,id=user.0,hostfwd=tcp:127.0.0.1:{{ .SSHHostPort }}-:22"],
                         ["-serial", f"file:{work / 'provision-console.log'}"]],
        }],
        "provisioners": [{"type": "shell", "inline": [STEP]}],
    }
    paths = work / "install.json", work / "provision.json"
    for path, template in zip(paths, (install, provision)):
        path.write_text(json.dumps(template, indent=2))
    return *paths, work / "out/packer.qcow2"


def spans(output: str, marks: list[tuple[str, str, str]]) -> dict[str, float]:
    """Seconds between the first UI lines (of `packer build -timestamp-ui`) containing
    each (start, end) pair of markers, to 1 s resolution."""
    stamped = []
    for line in output.splitlines():
        stamp, sep, text = line.partition("Z: ")
        if sep and stamp[:2] == "20":
            stamped.append((datetime.datetime.fromisoformat(stamp), text))

    def at(marker: str) -> datetime.datetime:
        return next(t for t, text in stamped if marker in text)

    return {label: (at(end) - at(start)).total_seconds() for label, start, end in marks}


def packer_build(template: Path, log: Path) -> tuple[float, str]:
    env = {**os.environ, "CHECKPOINT_DISABLE": "1", "PACKER_CACHE_DIR": str(template.parent / "packer_cache"),
           "PACKER_LOG": "1", "PACKER_LOG_PATH": str(log)}
    t0 = time.perf_counter()
    out = subprocess.run(["packer", "build", "-color=false", "-timestamp-ui", str(template)],
                         cwd=template.parent, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    (template.with_suffix(".out")).write_text(out.stdout + out.stderr)
    if out.returncode != 0:
        tail = "\n".join((out.stdout + out.stderr).splitlines()[-30:])
        sys.exit(f"packer build {template.name} failed (exit {out.returncode}; --keep DIR keeps {log.name}):\n{tail}")
    return seconds, out.stdout


def run_packer(work: Path, iso: Path, inputs: dict, accel: str) -> tuple[float, Path, dict[str, float]]:
    t0 = time.perf_counter()
    install, provision, artifact = packer_templates(work, iso, inputs, accel)
    phases = {"set-up (kernel from ISO, key, answer file)": time.perf_counter() - t0}
    phases["install build (communicator none)"], out = packer_build(install, work / "install-packer.log")
    phases |= spans(out, [("  VM start to power-off", "Starting VM", "finished after")])
    phases["provision build (ssh, shell, compress)"], out = packer_build(provision, work / "provision-packer.log")
    phases |= spans(out, [("  copy and resize the install disk", "Retrieving ISO", "Starting VM"),
                          ("  VM start to SSH", "Starting VM", "Connected to SSH"),
                          ("  shell provisioner", "Provisioning with shell", "Gracefully halting"),
                          ("  shutdown", "Gracefully halting", "Converting hard drive"),
                          ("  qemu-img convert -c (zlib)", "Converting hard drive", "finished after")])
    return time.perf_counter() - t0, artifact, phases


Phases = dict[str, dict[str, float]]  # stage -> phase -> seconds


def pim_figures(wall: float, events: list[dict], manifest: dict) -> tuple[dict[str, float], Phases]:
    """The PIM build's figures in seconds from its events (the time QEMU ran, the
    guest's time, and PIM's own overhead: wall time minus that), and its phases by stage."""
    phases: Phases = {}
    for e in events:
        data = e.get("data") or {}
        if "phase" in data:
            phases.setdefault(e["stage"], {})[data["phase"]] = data["seconds"]
    qemu = {e["stage"]: e["data"]["qemu_seconds"] for e in events if "qemu_seconds" in (e.get("data") or {})}
    boot = phases.get("boot", {})
    probe = next((e for e in events if e.get("message", "").startswith("accelerator:")), None)
    first = events[0]["time"] if events else 0.0
    return {
        "wall": wall,
        "build start to accelerator verdict": (probe["time"] - first) if probe else 0.0,
        "install VM": qemu.get("install", 0.0),
        "boot VM start to sshd": sum(boot.get(k, 0.0) for k in
                                     ("QEMU start", "firmware", "kernel", "userspace to sshd", "boot to sshd")),
        "boot SSH login + agent + save state": sum(boot.get(k, 0.0)
                                                   for k in ("SSH login", "guest agent", "save state")),
        "provision VM": qemu.get("provision", 0.0),
        "final (convert, sha256, SBOM, provenance)": manifest["stages"]["final"]["seconds"],
        "guest running (all VMs)": sum(qemu.values()),
        "PIM overhead (wall - guest running)": wall - sum(qemu.values()),
    }, phases


def one_run(work: Path, iso: Path, version: str) -> dict:
    work.mkdir(parents=True)
    load_start = load()
    pim_wall, pim_artifact, manifest, events = run_pim(work, iso)
    accel = manifest["tools"]["accel"]
    (work / "packer").mkdir()
    packer_wall, packer_artifact, phases = run_packer(work / "packer", iso, manifest["inputs"], accel)
    pim, pim_phases = pim_figures(pim_wall, events, manifest)
    floor = (min(pim["install VM"], phases["  VM start to power-off"])
             + min(pim["boot VM start to sshd"], phases["  VM start to SSH"]))
    return {"pim": pim, "pim_phases": pim_phases, "packer": {"wall": packer_wall, **phases}, "floor": floor,
            "accel": accel,
            "load": (load_start, load()), "sizes": (pim_artifact.stat().st_size, packer_artifact.stat().st_size),
            "pim_version": manifest["pim_version"], "packer_version": version}


def report(i: int, run: dict) -> None:
    pim, packer = run["pim"], run["packer"]
    print(f"run {i}: load average {run['load'][0]} -> {run['load'][1]}; {os.cpu_count()} CPUs; accel {run['accel']}")
    print(f"  PIM {run['pim_version']} (pim build, empty cache, accelerator probed)   {pim['wall']:7.1f} s")
    for label, seconds in pim.items():
        if label != "wall":
            print(f"    {label:60} {seconds:7.1f} s")
    for stage, phases in run["pim_phases"].items():
        print(f"    {stage}: " + ", ".join(f"{name} {sec:.1f}" for name, sec in phases.items()))
    print(f"  Packer {run['packer_version']} (two packer builds)                       {packer['wall']:7.1f} s")
    for label, seconds in packer.items():
        if label != "wall":
            print(f"  {label:62} {seconds:7.1f} s")
    pim_size, packer_size = run["sizes"]
    print(f"  floor (fastest install VM + fastest boot to sshd, this run)     {run['floor']:7.1f} s")
    print(f"  artifact: PIM {pim_size / 2**20:.1f} MiB, Packer {packer_size / 2**20:.1f} MiB")
    print(f"  PIM / Packer wall time {pim['wall'] / packer['wall']:.3f}; "
          f"floor / Packer {run['floor'] / packer['wall']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="work in DIR (new) and keep it: logs, templates, artifacts")
    parser.add_argument("--runs", type=int, default=3, help="runs of both tools, one after the other (default 3)")
    args = parser.parse_args()
    version = ensure_packer()
    iso = fixture_iso()
    runs = []
    with tempfile.TemporaryDirectory(prefix="pim-packer-bench-") as tmp:
        root = args.keep or Path(tmp)
        for i in range(1, args.runs + 1):
            runs.append(one_run(root / f"run{i}", iso, version))
            report(i, runs[-1])
    ratios = [r["pim"]["wall"] / r["packer"]["wall"] for r in runs]
    overheads = [r["pim"]["PIM overhead (wall - guest running)"] for r in runs]
    print("PIM / Packer per run: " + ", ".join(f"{x:.3f}" for x in ratios)
          + f"; median {statistics.median(ratios):.3f} (target <= 0.6: "
          + ("ok" if statistics.median(ratios) <= 0.6 else "MISSED") + ")")
    print("floor / Packer per run: " + ", ".join(f"{r['floor'] / r['packer']['wall']:.3f}" for r in runs))
    print("PIM overhead per run: " + ", ".join(f"{x:.1f} s" for x in overheads)
          + f"; median {statistics.median(overheads):.1f} s (target < 3 s: "
          + ("ok" if statistics.median(overheads) < 3 else "MISSED") + ")")


if __name__ == "__main__":
    sys.exit(main())
