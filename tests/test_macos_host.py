"""macOS hosts (Apple silicon, HVF, QEMU from Homebrew), tested on Linux with the
platform as an input: the accelerator choice and argv for HVF, QEMU, qemu-img and
firmware descriptors found under Homebrew's prefix, socket paths within macOS's
shorter limit, and the parent-death mechanism macOS gets (the lifeline), run for real
here. What only a Mac can show (HVF itself) is listed in the README."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pim.engine import platforms
from pim.engine.errors import InputError, MissingTool
from pim.engine.qemu import accel, firmware
from pim.engine.qemu.argv import RuntimeFiles, VmConfig, build_argv, machine_type
from pim.engine.run import find_tool
from tests.test_firmware import _descriptor, _files
from tests.test_spawn import _gone

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ accelerator and argv

def test_apple_silicon_runs_arm64_guests_under_hvf_and_x86_64_under_tcg() -> None:
    assert accel.candidates("aarch64", "Darwin", "arm64") == ["hvf", "tcg"]
    assert accel.candidates("x86_64", "Darwin", "arm64") == ["tcg"]  # HVF runs the host's own architecture
    assert accel.candidates("x86_64", "Darwin", "x86_64") == ["hvf", "tcg"]  # an Intel Mac
    assert accel.candidates("aarch64", "Linux", "x86_64") == ["tcg"]


def test_hvf_argv_is_virt_with_the_host_cpu(tmp_path: Path) -> None:
    cfg = VmConfig(name="m", disk=tmp_path / "d.qcow2", serial_log=tmp_path / "s.log", arch="aarch64", accel="hvf",
                   runtime=RuntimeFiles("m", tmp_path), memory_mib=4096, machine=machine_type("aarch64", "hvf", (9, 1)))
    argv = build_argv(cfg)
    assert argv[0] == "qemu-system-aarch64"
    assert argv[argv.index("-machine") + 1] == "virt,accel=hvf"
    assert argv[argv.index("-cpu") + 1] == "host"


def test_hvf_before_qemu_7_keeps_the_memory_map_inside_apple_silicons_ipa_space() -> None:
    assert machine_type("aarch64", "hvf", (6, 2), 3072) == "virt,highmem=off"
    with pytest.raises(InputError, match=r"at most 3072 MiB; set memory: 3G or less, or update QEMU to 7.0"):
        machine_type("aarch64", "hvf", (6, 2), 4096)
    assert machine_type("aarch64", "hvf", (7, 0), 8192) == "virt"  # 7.0 fits the map to the IPA range
    assert machine_type("aarch64", "tcg", (6, 2), 8192) == "virt"  # TCG has no IPA limit
    assert machine_type("x86_64", "hvf", (6, 2), 8192) == "q35"


# ------------------------------------------------------------------ Homebrew's QEMU

@pytest.fixture()
def homebrew(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Homebrew layout: <prefix>/bin links into the Cellar, firmware and descriptors in share/qemu."""
    prefix = tmp_path / "homebrew"
    cellar_bin = prefix / "Cellar/qemu/9.1.0/bin"
    cellar_bin.mkdir(parents=True)
    (prefix / "bin").mkdir()
    for tool in ("qemu-system-aarch64", "qemu-img"):
        (cellar_bin / tool).write_text("#!/bin/sh\necho \"$0 version 9.1.0\"\n")
        (cellar_bin / tool).chmod(0o755)
        (prefix / "bin" / tool).symlink_to(cellar_bin / tool)
    monkeypatch.setattr(platforms, "_TOOL_DIRS", {platforms.MACOS: (str(prefix / "bin"),)})
    return prefix


def test_qemu_is_found_in_homebrews_prefix_when_path_lacks_it(homebrew: Path) -> None:
    # A plugin or an app started from the Dock gets launchd's PATH, without Homebrew
    # (this host's /usr/bin has QEMU, so an empty folder stands in for it).
    launchd = {"PATH": str(homebrew.parent / "empty")}
    assert find_tool("qemu-img", launchd, platform="darwin") == str(homebrew / "bin/qemu-img")
    with pytest.raises(MissingTool):
        find_tool("qemu-system-riscv64", launchd, platform="darwin")
    with pytest.raises(MissingTool):  # Linux does not look there
        find_tool("qemu-system-aarch64", {"PATH": "/nonexistent"}, platform="linux")


def test_a_missing_program_names_the_homebrew_formula_on_macos() -> None:
    with pytest.raises(MissingTool, match=r"qemu-img is not installed .*: install it: brew install qemu$"):
        find_tool("qemu-img", {"PATH": "/nonexistent"}, platform="darwin")
    with pytest.raises(MissingTool, match=r"apt-get install qemu-utils$"):
        find_tool("qemu-img", {"PATH": "/nonexistent"}, platform="linux")


def test_firmware_descriptors_under_homebrews_prefix_are_read(homebrew: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    share = homebrew / "share/qemu"
    share.mkdir(parents=True)
    code, vars_ = _files(share, "edk2-aarch64-code.fd", "edk2-arm-vars.fd")
    _descriptor(share / "firmware", "60-edk2-aarch64.json", code, vars_, arch="aarch64", machines=("virt-*",))
    monkeypatch.setenv("PATH", str(homebrew / "bin"))
    monkeypatch.setattr(firmware, "_CANDIDATES", {"x86_64": [], "aarch64": []})  # descriptors alone
    monkeypatch.setattr(sys, "platform", "darwin")
    # Both the prefix on PATH and the Cellar the symlink leads to (QEMU's own datadir).
    assert firmware.qemu_prefixes() == [homebrew, homebrew / "Cellar/qemu/9.1.0"]
    dirs = firmware.search_dirs()
    assert dirs.index(Path("/usr/share/qemu/firmware")) < dirs.index(share / "firmware") < dirs.index(
        Path("/etc/qemu/firmware")) < dirs.index(homebrew / "etc/qemu/firmware")
    found = firmware.locate("aarch64")
    assert found == firmware.Found(firmware.Firmware(code, vars_), str(share / "firmware/60-edk2-aarch64.json"))
    assert json.loads(Path(found.source).read_text())["targets"][0]["architecture"] == "aarch64"


# ------------------------------------------------------------------ socket paths

def test_socket_path_limits_per_platform() -> None:
    assert platforms.socket_path_max("linux") == 107 and platforms.socket_path_max("darwin") == 103
    assert platforms.socket_path_max("freebsd14") == 103  # unknown: the smaller, BSD's


def test_the_default_runtime_folder_fits_every_image_name_on_macos() -> None:
    RuntimeFiles("a" * 63, Path("/tmp/pim")).check("darwin")  # names are at most 63 characters


def test_a_runtime_folder_too_long_for_macos_is_an_error_before_qemu_starts(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # $XDG_RUNTIME_DIR/pim/<name>.serial of 105 bytes: fine on Linux, too long on macOS.
    base = tmp_path / ("x" * (105 - len(f"{tmp_path}/") - len("/pim/vm.serial")))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(base))
    assert len(str(base / "pim/vm.serial")) == 105
    files = RuntimeFiles.for_name("vm")
    files.check("linux")
    with pytest.raises(InputError, match=r"vm\.serial is 105 bytes long; UNIX sockets on darwin take at most 103: "
                                         r"set XDG_RUNTIME_DIR to a shorter folder"):
        files.check("darwin")


# ------------------------------------------------------------------ QEMU does not outlive a killed PIM

PARENT = """
import os, sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from pim.engine.run import spawn_detached
p = spawn_detached({argv!r}, Path({log!r}))
print(p.pid, flush=True)
if {wait_child!r}:
    print(p.wait(), flush=True)
time.sleep(120)
"""


def _parent(tmp_path: Path, argv: list[str], mechanism: str, wait_child: bool = False) -> subprocess.Popen[str]:
    script = PARENT.format(root=str(ROOT), argv=argv, log=str(tmp_path / "log"), wait_child=wait_child)
    env = {**os.environ, "PIM_PARENT_DEATH": mechanism}
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return ""


def test_qemu_started_with_the_lifeline_dies_with_a_killed_pim(tmp_path: Path) -> None:
    # A real QEMU that would idle forever (no machine, no guest).
    parent = _parent(tmp_path, ["qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none"],
                     "lifeline")
    try:
        assert parent.stdout is not None
        qemu = int(parent.stdout.readline())
        deadline = time.monotonic() + 10
        while _comm(qemu) != "qemu-system-x86" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _comm(qemu) == "qemu-system-x86", "the launcher execs QEMU: the pid PIM holds is QEMU's"
        assert os.getsid(qemu) == qemu  # its own session: the terminal's Ctrl-C reaches only PIM
        watchers = [p for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == qemu]
        assert len(watchers) == 1, "one watcher, QEMU's child"
        time.sleep(1)
        assert not _gone(qemu, 0.1), "QEMU must run while PIM does"
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    assert _gone(qemu, 5), "QEMU outlived the PIM process that started it"
    assert _gone(int(watchers[0]), 5), "the watcher stays behind"


def test_the_lifeline_lets_an_exited_child_go_without_signalling_anything(tmp_path: Path) -> None:
    parent = _parent(tmp_path, ["sh", "-c", "sleep 1; exit 3"], "lifeline", wait_child=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        deadline = time.monotonic() + 5
        while not (watchers := [int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == child
                                and _comm(int(p)).startswith("python")]) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(watchers) == 1, "the program's watcher, its child"
        assert os.getpgid(watchers[0]) != os.getpgid(parent.pid), "out of PIM's process group: Ctrl-C spares it"
        assert parent.stdout.readline().strip() == "3", "PIM sees the program's own exit status"
        assert _gone(child, 5)
        assert _gone(watchers[0], 5), "the watcher leaves once the program has exited"
        assert parent.poll() is None  # the parent is alive: nothing was signalled
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()


def test_the_lifeline_is_what_macos_gets(monkeypatch: pytest.MonkeyPatch) -> None:
    from pim.engine import lifeline

    monkeypatch.delenv("PIM_PARENT_DEATH", raising=False)
    assert lifeline.wanted("darwin") and not lifeline.wanted("linux")
    monkeypatch.setenv("PIM_PARENT_DEATH", "lifeline")
    assert lifeline.wanted("linux")


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, IndexError, ValueError):
        return -1


def test_a_program_under_the_lifeline_gets_default_sigpipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Python ignores SIGPIPE and an ignored signal survives exec: the launcher must undo it.
    from pim.engine.run import run

    monkeypatch.setenv("PIM_PARENT_DEATH", "lifeline")
    out = run(["sh", "-c", "grep -E '^Sig(Ign|Cgt)' /proc/self/status"]).stdout
    ignored = int(out.split("SigIgn:")[1].split()[0], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1)) and not ignored & (1 << (signal.SIGXFSZ - 1)), out
