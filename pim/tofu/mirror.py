"""Install the provider into a Terraform/OpenTofu filesystem mirror (unpacked layout).

PIM's provider is not published in a registry: its source address uses the host
`pim.invalid` (a reserved name that never resolves), so Terraform only ever finds it
locally, through dev_overrides or a filesystem mirror made by `pim tofu mirror DIR`:

    DIR/pim.invalid/pim/pim/<version>/<os>_<arch>/terraform-provider-pim_v<version>

The file is a two-line script that runs this installation's `terraform-provider-pim`.
"""

from __future__ import annotations

import platform
import shlex
import shutil
import sys
from pathlib import Path

import pim

HOST, NAMESPACE, TYPE = "pim.invalid", "pim", "pim"
SOURCE = f"{HOST}/{NAMESPACE}/{TYPE}"
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def provider_executable() -> Path:
    beside = Path(sys.executable).with_name("terraform-provider-pim")
    found = beside if beside.is_file() else shutil.which("terraform-provider-pim")
    if not found:
        raise FileNotFoundError("terraform-provider-pim is not installed: reinstall PIM (pip install -e .)")
    return Path(found).resolve()


def platform_dir() -> str:
    machine = platform.machine().lower()
    if machine not in _ARCH:
        raise ValueError(f"no Terraform platform name for CPU {machine!r}")
    return f"{platform.system().lower()}_{_ARCH[machine]}"


def install(root: Path, version: str = pim.__version__) -> Path:
    folder = root / HOST / NAMESPACE / TYPE / version / platform_dir()
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / f"terraform-provider-{TYPE}_v{version}"
    exe.write_text(f"#!/bin/sh\nexec {shlex.quote(str(provider_executable()))} \"$@\"\n")
    exe.chmod(0o755)
    return exe


def cli_config(root: Path) -> str:
    return (f'provider_installation {{\n  filesystem_mirror {{\n    path    = "{root}"\n'
            f'    include = ["{SOURCE}"]\n  }}\n  direct {{\n    exclude = ["{SOURCE}"]\n  }}\n}}\n')
