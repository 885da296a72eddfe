"""Kickstarts are checked with the syntax version of the release they are for: from
installer.kickstart_version, else the ISO's .treeinfo, else RHEL9, and validate says which."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pim.engine.config.spec import load_config
from pim.engine.installers.prepare import check_answers
from pim.engine.installers.validate import kickstart_version_from_treeinfo
from tests.helpers import write_config

URL_ISO = {"iso": "http://iso.example/installer.iso", "sha256": "0" * 64}
RHEL8_KS = """\
text
lang en_US.UTF-8
keyboard us
timezone UTC --utc --ntpservers=0.pool.ntp.org
rootpw --lock
sshkey --username=root "{{ ssh_public_key }}"
zerombr
clearpart --all --initlabel
autopart
reboot
%packages --instLangs=en_US
@core
%end
"""
RHEL10_KS = RHEL8_KS.replace(" --ntpservers=0.pool.ntp.org", "").replace(" --instLangs=en_US", "") + \
    "rdp --username=admin --password=rdp-secret-1\n"


@pytest.mark.parametrize(("treeinfo", "version"), [
    ("[release]\nname = Red Hat Enterprise Linux\nshort = RHEL\nversion = 8.10\n", "RHEL8"),
    ("[general]\nfamily = Rocky Linux\nversion = 9.4\n", "RHEL9"),
    ("[release]\nname = CentOS Stream\nversion = 10\n[general]\nfamily = CentOS Stream\nversion = 10\n", "RHEL10"),
    ("[release]\nname = AlmaLinux\nversion = 10.0\n", "RHEL10"),
    ("[release]\nname = Fedora\nversion = 40\n", "F40"),
    ("[general]\nname = something\n", None),
    ("not an ini file", None),
])
def test_version_from_treeinfo(treeinfo: str, version: str | None) -> None:
    assert kickstart_version_from_treeinfo(treeinfo) == version


def _check(tmp_path: Path, ks: str, source: dict, **installer) -> tuple[list[str], list[str]]:
    cfg = write_config(tmp_path, {"web": {"source": source, "installer": {"family": "kickstart",
                                                                         "template": "ks.cfg", **installer}}},
                       {"ks.cfg": ks})
    notes: list[str] = []
    return [str(p) for p in check_answers(load_config(cfg), "web", notes)], notes


def test_rhel8_kickstart_accepted_when_the_config_says_rhel8(tmp_path: Path) -> None:
    problems, notes = _check(tmp_path, RHEL8_KS, URL_ISO, kickstart_version="RHEL8")
    assert problems == []
    assert "note: images.web: kickstart checked as RHEL8 (installer.kickstart_version)" in notes


def test_rhel8_kickstart_against_the_default_version_says_so(tmp_path: Path) -> None:
    problems, notes = _check(tmp_path, RHEL8_KS, URL_ISO)
    assert len(problems) == 2 and all("KickstartDeprecationWarning" in p for p in problems)
    assert any("--ntpservers" in p for p in problems) and any("--instLangs" in p for p in problems)
    assert notes[0].startswith("note: images.web: kickstart checked as RHEL9 (the default; set "
                               "installer.kickstart_version")


def test_rhel10_kickstart_with_rdp(tmp_path: Path) -> None:
    assert _check(tmp_path, RHEL10_KS, URL_ISO, kickstart_version="RHEL10")[0] == []
    problems, _ = _check(tmp_path / "9", RHEL10_KS, URL_ISO, kickstart_version="RHEL9")
    assert problems == ["images.web.installer: ks.cfg: line 14: rdp: Unknown command: rdp"]


def test_unknown_version_names_the_fix(tmp_path: Path) -> None:
    problems, _ = _check(tmp_path, RHEL8_KS, URL_ISO, kickstart_version="RHEL99")
    assert problems == ["images.web.installer: ks.cfg: pykickstart has no syntax version 'RHEL99' (e.g. RHEL9, F40)"]


@pytest.mark.skipif(shutil.which("xorriso") is None, reason="xorriso (make test installs it)")
@pytest.mark.parametrize(("ks", "treeinfo", "version"), [
    (RHEL8_KS, "[release]\nname = Red Hat Enterprise Linux\nversion = 8.10\n", "RHEL8"),
    (RHEL10_KS, "[release]\nname = Red Hat Enterprise Linux\nversion = 10.0\n", "RHEL10"),
])
def test_version_read_from_the_isos_treeinfo_in_pim_validate(tmp_path: Path, ks: str, treeinfo: str,
                                                            version: str) -> None:
    tree = tmp_path / "tree"
    (tree / "images/pxeboot").mkdir(parents=True)
    (tree / "images/pxeboot/vmlinuz").write_bytes(b"k")
    (tree / "images/pxeboot/initrd.img").write_bytes(b"i")
    (tree / ".treeinfo").write_text(treeinfo)
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-R", "-J", "-V", "RHEL-x86_64-dvd", "-o",
                    str(tmp_path / "rhel.iso"), str(tree)], check=True, capture_output=True)
    cfg = write_config(tmp_path, {"web": {"source": {"iso": "rhel.iso"},
                                          "installer": {"family": "kickstart", "template": "ks.cfg"}}},
                       {"ks.cfg": ks})
    out = subprocess.run([sys.executable, "-m", "pim.cli.main", "validate", "-c", str(cfg)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"note: images.web: kickstart checked as {version} (the ISO's .treeinfo)" in out.stderr
