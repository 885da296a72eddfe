"""Content keys of the build stages: sha256 over sorted JSON of every input.

install   -> ISO, answer template + vars + served files, boot, disk, firmware, arch, SSH user
provision -> install key + every step (script and upload contents, env) + finalize options
final     -> provision key + output options
Each stage also hashes its own code version, bumped whenever the stage's code
changes what it writes. A key that cannot be computed raises; it is never "".
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

from pim.engine.config.spec import Config, FileStep, ImageSpec, ShellStep

STAGE_VERSIONS = {"install": 1, "boot": 1, "provision": 1, "final": 1}


def digest(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def secret_digest(secret: str, cache: Path) -> str:
    """Keyed hash of a secret, so keys change with it but never reveal it.

    The salt is per cache (0600), so a key published elsewhere cannot be used
    to guess a weak password offline.
    """
    salt_file = cache / "secret-salt"
    if not salt_file.exists():
        tmp = cache / f"secret-salt.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(32))
        try:
            os.link(tmp, salt_file)  # atomic: first writer wins, nobody reads a half-written salt
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return hmac.new(salt_file.read_bytes(), secret.encode(), hashlib.sha256).hexdigest()


def install_inputs(cfg: Config, spec: ImageSpec, iso_sha256: str, cache: Path) -> dict[str, Any]:
    inst = spec.installer
    password = spec.ssh.password.get_secret_value() if spec.ssh.password else None
    return {
        "stage": "install",
        "version": STAGE_VERSIONS["install"],
        "iso_sha256": iso_sha256,
        "arch": spec.arch.value,
        "firmware": spec.firmware.value,
        "disk_size": spec.disk_size,
        "family": inst.family.value,
        "template": file_digest(cfg.path(inst.template)) if inst.template else None,
        "builtin": builtin_digests(inst.family.value),
        "answer_name": inst.answer_name,
        "vars": inst.vars,
        "settings": {k: getattr(inst, k) for k in ("mirror", "locale", "timezone", "keyboard")},
        "files": {name: file_digest(cfg.path(p)) for name, p in inst.files.items()},
        "boot": inst.boot.model_dump(mode="json") if inst.boot else None,
        "ssh_user": spec.ssh.user,
        "ssh_password": secret_digest(password, cache) if password else None,
    }


def builtin_digests(family: str) -> dict[str, str]:
    """Digests of a family's built-in templates (they are inputs when no user template replaces them)."""
    if family == "custom":
        return {}
    from pim.engine.installers.families import builtin_template, get

    return {name: hashlib.sha256(builtin_template(family, name).encode()).hexdigest() for name in get(family).templates}


def _step_inputs(cfg: Config, step: ShellStep | FileStep) -> dict[str, Any]:
    if isinstance(step, ShellStep):
        return {
            "type": "shell",
            "inline": step.inline,
            "script": file_digest(cfg.path(step.script)) if step.script else None,
            "env": step.env,
            "expect_disconnect": step.expect_disconnect,
        }
    return {
        "type": "file",
        "source": file_digest(cfg.path(step.source)),
        "destination": step.destination,
        "mode": step.mode,
    }


def provision_inputs(cfg: Config, spec: ImageSpec, install_key: str) -> dict[str, Any]:
    return {
        "stage": "provision",
        "version": STAGE_VERSIONS["provision"],
        "install": install_key,
        "env": spec.env,
        "steps": [_step_inputs(cfg, s) for s in spec.provision],
        "finalize": spec.finalize.model_dump(mode="json"),
    }


def boot_inputs(spec: ImageSpec, install_key: str, accel: str, qemu_version: str) -> dict[str, Any]:
    """The booted-guest snapshot: a saved machine state only restores into the same
    machine (memory, CPUs, accelerator, QEMU build), so all of those are inputs. It
    does not change the image's bytes, so no later key depends on it."""
    return {
        "stage": "boot",
        "version": STAGE_VERSIONS["boot"],
        "install": install_key,
        "arch": spec.arch.value,
        "firmware": spec.firmware.value,
        "cpus": spec.cpus,
        "memory": spec.memory,
        "accel": accel,
        "qemu": qemu_version,
    }


def final_inputs(spec: ImageSpec, provision_key: str) -> dict[str, Any]:
    return {
        "stage": "final",
        "version": STAGE_VERSIONS["final"],
        "provision": provision_key,
        "output": spec.output.model_dump(mode="json"),
    }


def stage_keys(cfg: Config, spec: ImageSpec, iso_sha256: str, cache: Path) -> dict[str, str]:
    install = digest(install_inputs(cfg, spec, iso_sha256, cache))
    provision = digest(provision_inputs(cfg, spec, install))
    final = digest(final_inputs(spec, provision))
    return {"install": install, "provision": provision, "final": final}
