"""Small helpers shared by tests."""

from __future__ import annotations

import textwrap
from pathlib import Path

import yaml


def write_config(folder: Path, images: dict, files: dict[str, str] | None = None) -> Path:
    """Write pim.yaml (and any referenced files) into folder; return the config path."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in (files or {}).items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(content))
    cfg = folder / "pim.yaml"
    cfg.write_text(yaml.safe_dump({"images": images}, sort_keys=False))
    return cfg


def minimal_image(iso: str = "installer.iso", **overrides) -> dict:
    image = {
        "source": {"iso": iso},
        "installer": {
            "template": "answer.txt",
            "boot": {"kernel": "/install.amd/vmlinuz", "initrd": "/install.amd/initrd.gz",
                     "params": "console=ttyS0 url={{ answer_url }}"},
        },
        "provision": [{"type": "shell", "inline": "echo hi > /root/hello"}],
    }
    image.update(overrides)
    return image


MINIMAL_FILES = {"installer.iso": "not really an iso", "answer.txt": "hostname={{ hostname }}\n"}
