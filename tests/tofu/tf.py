"""Run the real terraform binary in a sandbox: a temporary HOME, CHECKPOINT_DISABLE=1,
and a CLI config whose dev_overrides serve PIM's provider (and the stand-in for
hashicorp/external) without `terraform init`. Configurations that need hashicorp/aws
get it from the filesystem mirror the machine image carries, and then take PIM's
provider and the stand-in from a filesystem mirror too (`terraform init` does not
skip dev-overridden providers while it installs the others)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TERRAFORM = shutil.which("terraform")
needs_terraform = pytest.mark.skipif(
    TERRAFORM is None, reason="no terraform binary on PATH: these tests drive the real one (install Terraform >= 1.0)")


@functools.cache
def aws_mirror() -> Path | None:
    """The filesystem mirror holding hashicorp/aws: the folder above its registry host folder.

    Looked for where mirrors are kept, never by walking the whole disk: Terraform's
    implied local mirror folders, then each folder directly under /opt (where the
    machine image keeps it)."""
    data_dirs = os.environ.get("XDG_DATA_DIRS") or "/usr/local/share:/usr/share"
    roots = [Path.home() / ".terraform.d" / "plugins", Path.home() / ".local" / "share" / "terraform" / "plugins",
             *(Path(d) / "terraform" / "plugins" for d in data_dirs.split(":") if d),
             *(sorted(Path("/opt").iterdir()) if Path("/opt").is_dir() else [])]
    for root in roots:
        for path in sorted(root.glob("*/hashicorp/aws")) if root.is_dir() else []:
            if path.parent.parent.name.count(".") >= 1 and any(path.iterdir()):
                return root
    return None


def standin_dir(root: Path) -> Path:
    """A folder with `terraform-provider-external`: tests/tofu/external_standin.py."""
    folder = root / "standin"
    folder.mkdir(exist_ok=True)
    exe = folder / "terraform-provider-external"
    exe.write_text(f"#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m tests.tofu.external_standin\n")
    exe.chmod(0o755)
    return folder


def standin_mirror(sandbox: Path, host: str) -> Path:
    """A filesystem mirror holding the stand-in as hashicorp/external (for `terraform init`,
    which does not skip dev-overridden providers when it installs the others)."""
    from pim.tofu.mirror import platform_dir

    root = sandbox / "standin-mirror"
    folder = root / host / "hashicorp/external/2.3.5" / platform_dir()
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "terraform-provider-external_v2.3.5"
    shutil.copy(standin_dir(sandbox) / "terraform-provider-external", exe)
    return root


class Terraform:
    def __init__(self, workdir: Path, sandbox: Path, env: dict[str, str], *, aws: bool = False):
        """aws: configurations that need `terraform init` for hashicorp/aws (from the
        machine's mirror); the external stand-in then comes from a mirror too."""
        self.workdir = workdir
        home = sandbox / "home"
        home.mkdir(parents=True, exist_ok=True)
        mirror = aws_mirror() if aws else None
        lines = ["provider_installation {"]
        if mirror is None:
            overrides = {"pim.invalid/pim/pim": str(Path(sys.executable).parent),
                         "hashicorp/external": str(standin_dir(sandbox))}
            lines += ["  dev_overrides {", *(f'    "{src}" = "{path}"' for src, path in overrides.items()), "  }"]
        else:  # everything through `terraform init`: PIM's provider as `pim tofu mirror` installs it
            from pim.tofu import mirror as pim_mirror

            host = next(p.name for p in mirror.iterdir() if (p / "hashicorp/aws").is_dir())
            local = standin_mirror(sandbox, host)
            pim_mirror.install(local)
            lines += ["  filesystem_mirror {", f'    path    = "{mirror}"', '    include = ["hashicorp/aws"]', "  }"]
            lines += ["  filesystem_mirror {", f'    path    = "{local}"',
                      f'    include = ["hashicorp/external", "{pim_mirror.SOURCE}"]', "  }"]
        lines += ["}"]
        cli_config = sandbox / "terraform.rc"
        cli_config.write_text("\n".join(lines) + "\n")
        self.env = {**os.environ, **env, "HOME": str(home), "CHECKPOINT_DISABLE": "1",
                    "TF_CLI_CONFIG_FILE": str(cli_config), "TF_IN_AUTOMATION": "1",
                    "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
        self.env.pop("TF_LOG", None)

    def __call__(self, *args: str, ok: tuple[int, ...] = (0,), timeout: float = 1800) -> subprocess.CompletedProcess:
        assert TERRAFORM is not None
        proc = subprocess.run([TERRAFORM, *args, "-no-color"] if args[0] not in ("output",) else [TERRAFORM, *args],
                              cwd=self.workdir, env=self.env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode not in ok:
            raise AssertionError(f"terraform {' '.join(args)} exited {proc.returncode}\n"
                                 f"--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}")
        return proc

    def outputs(self) -> dict:
        import json

        out = json.loads(self("output", "-json").stdout)
        return {k: v["value"] for k, v in out.items()}
