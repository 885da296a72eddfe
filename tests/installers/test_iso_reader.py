"""One ISO reader for layout detection and extraction, on small images of each kind:
plain ISO 9660 level 1 (`VMLINUZ.;1`, `_TREEINF.;1`), Joliet only, Rock Ridge."""

import shutil
import subprocess
from pathlib import Path

import pytest

from pim.engine.errors import InputError
from pim.engine.installers.layouts import detect
from pim.engine.source.iso import IsoImage, extract, read_text
from tests.installers.helpers import make_iso

pytestmark = pytest.mark.skipif(shutil.which("xorriso") is None, reason="xorriso (make test installs it)")

FILES = {"/install.amd/vmlinuz": b"kernel bytes\n", "/install.amd/initrd.gz": b"initrd bytes\n",
         "/.treeinfo": b"[general]\nfamily = Debian\n", "/EFI/BOOT/BOOTX64.EFI": b"efi\n"}
KINDS = {
    "level1": ["-iso-level", "1", "--norock"],  # plain ISO 9660 names only
    "joliet": ["-iso-level", "1", "--norock", "-J"],  # Joliet beside level-1 names
    "rockridge": ["-iso-level", "1", "-R"],
}


def _iso(tmp_path: Path, kind: str) -> Path:
    tree = tmp_path / "tree"
    for name, data in FILES.items():
        (tree / name.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (tree / name.lstrip("/")).write_bytes(data)
    iso = tmp_path / f"{kind}.iso"
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", *KINDS[kind], "-V", "Debian 12 amd64 n", "-o", str(iso),
                    str(tree)], check=True, capture_output=True)
    return iso


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_detection_and_extraction_agree(tmp_path: Path, kind: str) -> None:
    iso = _iso(tmp_path, kind)
    import pycdlib

    cd = pycdlib.PyCdlib()
    cd.open(str(iso))
    facets = (cd.has_rock_ridge(), cd.has_joliet())
    names = {c.file_identifier().decode() for c in cd.list_children(iso_path="/INSTALL.AMD")}
    cd.close()
    assert facets == {"level1": (False, False), "joliet": (False, True), "rockridge": (True, False)}[kind]
    assert "VMLINUZ.;1" in names  # what the reader must map /install.amd/vmlinuz to

    layout = detect(iso)
    assert (layout.kernel, layout.initrd, layout.family_guess) == ("/install.amd/vmlinuz", "/install.amd/initrd.gz",
                                                                   "debian")
    extract(iso, {layout.kernel: tmp_path / "kernel", layout.initrd: tmp_path / "initrd"})
    assert (tmp_path / "kernel").read_bytes() == FILES["/install.amd/vmlinuz"]
    assert (tmp_path / "initrd").read_bytes() == FILES["/install.amd/initrd.gz"]
    assert read_text(iso, "/.treeinfo") == FILES["/.treeinfo"].decode()  # `_TREEINF.;1` on level 1
    with IsoImage(iso) as image:
        assert image.exists("/EFI/BOOT/BOOTX64.EFI") and not image.exists("/casper/vmlinuz")


def test_rock_ridge_names_unlike_the_iso9660_ones(tmp_path: Path) -> None:
    # ISO 9660 names D00001/F00001: only the Rock Ridge names say what the files are.
    iso = make_iso(tmp_path / "rr.iso", "Rocky-9-4-x86_64-dvd", ["/images/pxeboot/vmlinuz",
                                                                 "/images/pxeboot/initrd.img"], "pycdlib")
    layout = detect(iso)
    extract(iso, {layout.kernel: tmp_path / "kernel"})
    assert (tmp_path / "kernel").read_bytes() == b"dummy /images/pxeboot/vmlinuz\n"


def test_missing_member_and_unreadable_image_are_input_errors(tmp_path: Path) -> None:
    iso = _iso(tmp_path, "level1")
    with pytest.raises(InputError, match=r"/casper/vmlinuz not found in level1.iso; set installer.boot.kernel"):
        extract(iso, {"/casper/vmlinuz": tmp_path / "k"})
    assert not (tmp_path / "k.part").exists() and not (tmp_path / "k").exists()
    (tmp_path / "not.iso").write_bytes(b"x" * 4096)
    with pytest.raises(InputError, match="not a readable ISO 9660 image"):
        extract(tmp_path / "not.iso", {"/a": tmp_path / "a"})
