import shutil
import subprocess
from pathlib import Path

import pytest

from pim.engine.errors import InputError
from pim.engine.installers.families import default_files
from pim.engine.installers.seed import build_seed_iso
from tests.installers.helpers import variables


def test_seed_iso_carries_the_nocloud_files_under_their_names(tmp_path: Path) -> None:
    import pycdlib

    files = default_files("ubuntu", variables())
    dest = build_seed_iso(files, tmp_path / "seed.iso")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed.iso"]  # no partial file left
    cd = pycdlib.PyCdlib()
    cd.open(str(dest))
    try:
        assert cd.pvd.volume_identifier.decode().strip() == "cidata"
        for facet in ("rr_path", "joliet_path"):
            for name, data in files.items():
                out = tmp_path / f"{facet}-{name}"
                cd.get_file_from_iso(str(out), **{facet: f"/{name}"})
                assert out.read_bytes() == data
    finally:
        cd.close()


@pytest.mark.skipif(shutil.which("xorriso") is None, reason="xorriso not installed")
def test_another_iso_reader_sees_the_same(tmp_path: Path) -> None:
    files = {"user-data": b"#cloud-config\n", "meta-data": b"instance-id: x\n", "vendor-data": b"{}\n"}
    dest = build_seed_iso(files, tmp_path / "seed.iso")
    info = subprocess.run(["xorriso", "-indev", str(dest), "-pvd_info"], capture_output=True, text=True).stdout
    assert "Volume Id    : cidata" in info
    out = tmp_path / "out"
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(dest), "-extract", "/", str(out)],
                   capture_output=True, check=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files


def test_bad_file_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file names"):
        build_seed_iso({"../user-data": b""}, tmp_path / "seed.iso")
    assert not list(tmp_path.iterdir())
