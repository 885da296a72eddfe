"""The built-in installer families wired through the spec, prepare() and `pim validate`."""

import subprocess
import sys
from pathlib import Path

import pytest

from pim.engine.errors import SpecError
from pim.engine.installers import render
from pim.engine.installers.prepare import check_answers, installer_variables, prepare
from pim.engine.config.spec import load_config
from tests.helpers import write_config
from tests.installers.helpers import make_iso
from tests.installers.test_layouts import DEBIAN_AMD64, ROCKY_X86

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHs2W2tqg4c1d9sEJrPiNTpnKTSGnrmHDV1aV2kqdmSX pim-build-x"


def _cfg(tmp_path: Path, installer: dict, iso_spec=DEBIAN_AMD64, **image):
    make_iso(tmp_path / "installer.iso", iso_spec[0], iso_spec[1], "pycdlib")
    return load_config(write_config(tmp_path, {"img": {"source": {"iso": "installer.iso"},
                                                        "installer": installer, **image}}))


def _variables(spec, name: str) -> dict:
    return {**installer_variables(spec), "proxy_url": "http://10.0.2.2:3142/", "image": "img", "hostname": "img",
            "ssh_public_key": KEY, "http_url": "http://10.0.2.2:9/t/", "answer_url": f"http://10.0.2.2:9/t/{name}"}


def test_debian_detects_boot_and_renders_preseed(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, {"family": "debian", "locale": "de_DE.UTF-8", "timezone": "Europe/Berlin"})
    spec = cfg.image("img")
    prepared = prepare(cfg, spec, cfg.path("installer.iso"), _variables(spec, "preseed.cfg"))
    assert prepared.answer_name == "preseed.cfg"
    assert (prepared.boot.kernel, prepared.boot.initrd) == ("/install.amd/vmlinuz", "/install.amd/initrd.gz")
    append = render(prepared.boot.params, prepared.variables, "params")
    assert "url=http://10.0.2.2:9/t/preseed.cfg" in append and "console=ttyS0,115200" in append
    preseed = prepared.files["preseed.cfg"].decode()
    assert KEY in preseed and "de_DE.UTF-8" in preseed and "Europe/Berlin" in preseed
    assert "Installation step failed" in "".join(prepared.failure_patterns)


def test_kickstart_with_password_never_renders_it_plain(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, {"family": "kickstart"}, ROCKY_X86, ssh={"user": "admin", "password": "Sup3r-secret-pw"})
    spec = cfg.image("img")
    prepared = prepare(cfg, spec, cfg.path("installer.iso"), _variables(spec, "ks.cfg"))
    text = b"".join(v for v in prepared.files.values() if isinstance(v, bytes)).decode()
    assert "Sup3r-secret-pw" not in text and "$6$" in text
    assert "inst.stage2=hd:LABEL=Rocky-9-4-x86_64-dvd" in prepared.boot.params
    assert check_answers(cfg, "img") == []


def test_custom_family_needs_template_and_boot(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"family custom needs template \(or answer_file\) and boot"):
        _cfg(tmp_path, {"family": "custom"})


def test_validate_runs_the_installers_own_checkers(tmp_path: Path) -> None:
    (tmp_path / "my.preseed").write_text("d-i debian-installer/locale strnig en_US\n")
    _cfg(tmp_path, {"family": "debian", "template": "my.preseed"})
    out = subprocess.run([sys.executable, "-m", "pim.cli.main", "validate", "-c", str(tmp_path / "pim.yaml")],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "images.img.installer" in out.stderr and "Unknown type strnig" in out.stderr
