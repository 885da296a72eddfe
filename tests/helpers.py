"""Small helpers shared by tests."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

MIRROR_PROBE_TIMEOUT = 10.0  # seconds for the one request that tells whether the mirror answers


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


MINIMAL_FILES = {"installer.iso": "not really an iso",
                 "answer.txt": "hostname={{ hostname }}\nssh_authorized_key={{ ssh_public_key }}\n"}


def apt_package_uris(*packages: str, update: bool = False) -> list[tuple[str, str]]:
    """[(url, sha256)] of the packages' files on the mirror the host's apt uses, read at
    run time (`apt-get download --print-uris`; no mirror is ever written down).

    Skips the calling test, with the reason, when apt-get is missing, when apt knows
    no URL for them (after one `apt-get update` if update is true), or when the
    mirror does not answer one bounded request.
    """
    if not shutil.which("apt-get"):
        pytest.skip("apt-get is not available: this test needs a Debian host's apt sources")
    for attempt in range(2 if update else 1):
        out = subprocess.run(["apt-get", "download", "--print-uris", *packages], capture_output=True, text=True,
                             timeout=120)
        uris = []
        for line in out.stdout.splitlines():
            url, _name, _size, digest = line.split()
            if digest.startswith("SHA256:"):
                uris.append((url.strip("'"), digest.split(":", 1)[1]))
        if uris:
            problem = mirror_unreachable(uris[0][0])
            if problem:
                pytest.skip(f"the Debian package mirror of the host's apt sources is unreachable ({problem}): "
                            "this test downloads real packages from it")
            return uris
        if attempt == 0 and update:  # package lists missing: fetch them, as `make test`'s set-up does
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=300)
    pytest.skip(f"apt knows no download URL for {' '.join(packages)}: run `apt-get update` on this host first")


def mirror_unreachable(url: str) -> str | None:
    """Why the server of url does not answer (one HEAD request of url, at most
    MIRROR_PROBE_TIMEOUT seconds, once per server and run), or None when it answers."""
    parts = urllib.parse.urlsplit(url)
    server = f"{parts.scheme}://{parts.netloc}"
    if server not in _PROBED:
        _PROBED[server] = _probe(url)
    return _PROBED[server]


_PROBED: dict[str, str | None] = {}


def _probe(url: str) -> str | None:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=MIRROR_PROBE_TIMEOUT):
            return None
    except urllib.error.HTTPError:
        return None  # it answered; a missing file is for the test itself to report
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return f"{type(reason).__name__}: {reason}"
