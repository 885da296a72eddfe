"""The example configs load: every image and target validates, files they name exist.
(The demo's installer.iso is made by `make demo`: a copy of the examples gets a stand-in.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pim.engine.config.spec import load_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("config, images, targets", [
    ("demo/pim.yaml", {"demo"}, set()),
    ("demo/netinst.yaml", {"debian-12"}, set()),
    ("tofu/pim.yaml", {"demo"}, {"aws", "pve"}),
])
def test_example_config_validates(config: str, images: set, targets: set, tmp_path: Path) -> None:
    copy = tmp_path / "examples"
    shutil.copytree(EXAMPLES, copy, symlinks=True, ignore=shutil.ignore_patterns("installer.iso", ".terraform*"))
    (copy / "demo/installer.iso").write_bytes(b"")
    cfg = load_config(copy / config)
    assert set(cfg.images) == images and set(cfg.targets) == targets


def test_the_netinst_example_uses_the_debian_family_and_a_checksummed_url() -> None:
    image = load_config(EXAMPLES / "demo/netinst.yaml").images["debian-12"]
    assert image.source.is_url and image.source.sha256 and image.installer.family == "debian"
    assert image.installer.template is None and image.installer.boot is None  # detected from the ISO
