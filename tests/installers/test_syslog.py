"""The installer's log stream: RFC 3164 datagrams over real UDP to the receiver."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from pim.engine.guest.console import ConsoleWatcher, LineWatch, Patterns
from pim.engine.errors import InstallerFailed
from pim.engine.events import Emitter, Event
from pim.engine.pipeline.install import _check
from pim.engine.installers import render
from pim.engine.installers.families import FAMILIES
from pim.engine.services.syslog import Record, SyslogReceiver, parse
from tests.test_console import _wait_for

DEBIAN = FAMILIES["debian"]
MIRROR = "http://mirror.example/debian"  # reserved name: no real mirror
UDEB = "pool/main/a/apt-setup/apt-mirror-setup_0.182_all.udeb"
HASH = "$6$pim$Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFy"  # shaped like a crypt hash

# What debian-installer 12 sent to PIM under QEMU (busybox syslogd: no host name).
BOOT = [
    b"<13>Nov 26 12:50:50 udhcpc: Got IP 10.0.2.15 (using ens3) and routing through 10.0.2.2\n",
    b"<15>Nov 26 12:50:53 netcfg[499]: DEBUG: Using preseeded hostname\n",
    b"<14>Nov 26 12:50:57 main-menu[255]: INFO: Menu item 'network-preseed' selected\n",
    b"<13>Nov 26 12:52:39 preseed: successfully loaded preseed file from http://10.0.2.2:33527/TOKEN/preseed.cfg\n",
    b"<14>Nov 26 12:52:40 main-menu[255]: INFO: Menu item 'localechooser' selected\n",
    b"<13>Nov 26 12:52:43 localechooser: info: debian-installer/locale preseeded to 'en_US.UTF-8' (seen: true)\n",
    b"<15>Nov 26 12:52:45 debconf: Setting passwd/root-password-crypted to " + HASH.encode() + b"\n",
    b"<14>Nov 26 12:53:13 main-menu[255]: INFO: Menu item 'choose-mirror' selected\n",
    b"<14>Nov 26 12:53:22 main-menu[255]: INFO: Menu item 'download-installer' selected\n",
    b"<13>Nov 26 12:53:26 net-retriever: regular: dists/bookworm/Release /tmp/net-retriever-2860-Release\n",
    b"<14>Nov 26 12:53:27 anna[2858]: 2026-11-26 12:53:27 URL:" + MIRROR.encode()
    + b"/dists/bookworm/Release [149266/149266] -> \"/tmp/_fetch-url_net-retriever-2860-Release.2865\" [1]\n",
    b"<15>Nov 26 12:53:43 anna[2858]: DEBUG: retrieving apt-mirror-setup 1:0.182\n",
    f"<13>Nov 26 12:53:44 net-retriever: regular: {UDEB} /var/cache/anna/apt-mirror-setup_0.182_all.udeb\n".encode(),
]
FAILURE = [
    f"<14>Nov 26 12:53:45 anna[2858]: {MIRROR}/{UDEB}:\n".encode(),
    b"<14>Nov 26 12:53:45 anna[2858]: 2026-11-26 12:53:45 ERROR 404: Not Found.\n",
    b"<12>Nov 26 12:53:45 anna[2858]: WARNING **: package retrieval failed\n",
]


def _send(port: int, datagrams: list[bytes]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for data in datagrams:
            s.sendto(data, ("127.0.0.1", port))


def test_parse_busybox_and_rfc3164_with_host_name() -> None:
    assert parse(b"<14>Nov 26 12:53:22 main-menu[255]: INFO: Menu item 'pkgsel' selected\n") == [
        Record(1, 6, None, "main-menu", "main-menu[255]: INFO: Menu item 'pkgsel' selected")]
    # RFC 3164's own example, host name and all
    assert parse(b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8") == [
        Record(4, 2, "mymachine", "su", "su: 'su root' failed for lonvick on /dev/pts/8")]
    assert parse(b"<13>Nov  6 01:02:03 net-retriever: \n") == [Record(1, 5, None, "net-retriever", "net-retriever:")]
    assert parse(b"<4>Nov 26 12:52:24 kernel: [  183.483826] hrtimer: interrupt took 11483070 ns") == [
        Record(0, 4, None, "kernel", "kernel: [  183.483826] hrtimer: interrupt took 11483070 ns")]


def test_parse_packed_lines_headerless_text_and_bad_bytes() -> None:
    records = parse(b"<13>Nov 26 12:00:00 a: one\r\n<11>Nov 26 12:00:01 b[7]: two\n\ncontinued \xff\x1b[1m\n")
    assert [(r.tag, r.severity, r.text) for r in records] == [
        ("a", 5, "a: one"), ("b", 3, "b[7]: two"), (None, None, "continued \ufffd")]
    assert parse(b"<13>no time stamp: here") == [Record(1, 5, None, None, "no time stamp: here")]


def test_receiver_follows_steps_and_ends_on_a_failed_retrieval_naming_the_file() -> None:
    events: list[Event] = []
    emitter = Emitter(events.append)
    emitter.add_secret("TOKEN")
    emitter.add_secret(HASH)
    with SyslogReceiver(emitter, "install", DEBIAN.log_patterns()) as rx:
        assert rx.guest_address == ("10.0.2.2", rx.port)
        _send(rx.port, BOOT)
        assert _wait_for(lambda: rx.datagrams == len(BOOT))
        assert rx.failure is None
        _send(rx.port, FAILURE)
        assert _wait_for(lambda: rx.failure is not None)
    watch = rx.watch
    assert watch.failure == "anna[2858]: WARNING **: package retrieval failed"
    assert (watch.failed_step, watch.missing) == ("download-installer", f"{MIRROR}/{UDEB}")
    assert watch.describe() == (" in step download-installer: could not retrieve apt-mirror-setup_0.182_all.udeb "
                                f"(ERROR 404: Not Found. {MIRROR}/{UDEB}): "
                                "anna[2858]: WARNING **: package retrieval failed")
    with pytest.raises(InstallerFailed) as e:
        _check(watch)
    assert str(e.value).startswith("the installer failed in step download-installer: could not retrieve "
                                   "apt-mirror-setup_0.182_all.udeb")
    assert e.value.tail[-1] == watch.failure and len(e.value.tail) == len(BOOT) + len(FAILURE)

    messages = [ev.message for ev in events]
    assert messages[0] == "receiving the installer's log stream"
    steps = [(ev.data.get("step"), ev.data.get("label")) for ev in events if "step" in ev.data]
    assert steps == [("network-preseed", None), ("localechooser", None), ("choose-mirror", None),
                     ("download-installer", "installer components")]
    assert "installer: preseed loaded" in messages
    lines = [ev for ev in events if ev.data.get("source") == "syslog"]
    assert len(lines) == len(BOOT) + len(FAILURE) and all(ev.stage == "install" for ev in lines)
    text = "\n".join(messages + watch.tail())
    assert "TOKEN" not in text and HASH not in text and "to ********" in text


def test_benign_errors_do_not_fail_and_a_step_change_forgets_its_downloads() -> None:
    watch = LineWatch(Emitter(), "install", "syslog", DEBIAN.log_patterns())
    for line in ["main-menu[255]: INFO: Menu item 'choose-mirror' selected",
                 f"choose-mirror[2805]: {MIRROR}/dists/sid/Release:",
                 "choose-mirror[2805]: 2026-11-26 12:53:19 ERROR 404: Not Found.",
                 "main-menu[255]: INFO: Falling back to the package description for brltty-udeb",
                 "main-menu[255]: INFO: Menu item 'partman-base' selected",
                 "partman: mkfs.ext4 -F /dev/vda1: done"]:
        watch.feed(line)
    assert watch.failure is None and watch.missing is None and watch.label == "partitioning"
    watch.feed("main-menu[255]: WARNING **: Configuring 'partman-base' failed with error code 1")
    assert watch.describe() == (" in step partman-base: "
                                "main-menu[255]: WARNING **: Configuring 'partman-base' failed with error code 1")


@pytest.mark.parametrize("line", [
    "base-installer: error: exiting on error base-installer/debootstrap-failed",
    "debootstrap: Failed to retrieve dists/bookworm/Release",
    "in-target: E: Failed to fetch http://mirror.example/debian/pool/main/c/cloud-init/x.deb  404  Not Found",
    "kernel: Kernel panic - not syncing: Attempted to kill init!",
    "apt-install: E: Unable to fetch some archives",
])
def test_installer_failure_lines(line: str) -> None:
    watch = LineWatch(Emitter(), "install", "syslog", DEBIAN.log_patterns([r"my own (?:failure)"]))
    watch.feed(line)
    assert watch.failure == line
    user = LineWatch(Emitter(), "install", "syslog", DEBIAN.log_patterns([r"my own (?:failure)"]))
    user.feed("late-command: my own failure")
    assert user.failure


def test_apt_names_the_file_it_could_not_fetch() -> None:
    watch = LineWatch(Emitter(), "install", "syslog", DEBIAN.log_patterns())
    watch.feed("main-menu[255]: INFO: Menu item 'pkgsel' selected")
    watch.feed(f"in-target: E: Failed to fetch {MIRROR}/pool/main/c/cloud-init/ci.deb  "
               "404  Not Found [IP: 10.0.2.2 80]")
    assert (watch.failed_step, watch.missing) == ("pkgsel", f"{MIRROR}/pool/main/c/cloud-init/ci.deb")
    assert "could not retrieve ci.deb (404  Not Found" in watch.describe()


def test_queued_datagrams_are_read_on_drain_and_only_loopback_listens() -> None:
    with SyslogReceiver(Emitter(), "install", Patterns()) as rx:
        assert rx.address == ("127.0.0.1", rx.port)
        _send(rx.port, [b"<14>Nov 26 12:00:00 x: %d" % i for i in range(50)])
        rx.drain()
    assert rx.datagrams == 50 and rx.tail()[-1] == "x: 49"


def test_debian_asks_for_the_log_stream_and_others_do_not() -> None:
    assert render(DEBIAN.log_params, {"log_host": "10.0.2.2", "log_port": 40514}, "params") == (
        "log_host=10.0.2.2 log_port=40514")
    assert FAMILIES["ubuntu"].log_params == FAMILIES["kickstart"].log_params == ""


def test_console_lines_show_progress_labels_once(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    events: list[Event] = []
    with ConsoleWatcher(log, Emitter(events.append), "install", [], DEBIAN.progress) as w:
        log.write_text("x Loading additional components x\n" * 3 + "  Partition disks  \n")
        w.drain()
    labels = [ev.message for ev in events if "label" in ev.data]
    assert labels == ["installer: installer components", "installer: partitioning"]
    assert w.failure is None
