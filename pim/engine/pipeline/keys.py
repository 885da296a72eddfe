"""Content keys of the build stages: sha256 over sorted JSON of every input.

The one place where stage keys are computed:

install   ISO sha256, arch, firmware, disk size, family and its built-in templates
          and boot parameters, answer template + vars + served files, the spec's
          boot (not the typing delay), the image name, SSH user and (keyed hash of
          the) password
boot      install key + the machine the saved state restores into (arch, firmware,
          CPUs, memory, accelerator, QEMU version); it never changes the image's
          bytes, so no later key depends on it
provision install key + env + every step (script and upload contents, env, order)
          + finalize options + the text PIM writes into the guest (`guestfiles`)
final     provision key + output options (compression as resolved on this host)

Everything that can change an image's bytes is hashed as content. Each stage also
hashes a version in STAGE_VERSIONS, bumped only for a change of behaviour that is
not content (how a stage drives the guest). A key that cannot be computed raises
(a missing script: InputError); it is never "".
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pim.engine.config.spec import Config, FileStep, ImageSpec, ShellStep
from pim.engine.errors import InputError
from pim.engine.pipeline import guestfiles

# provision 3: the object carries the guest's package list; final 3: the SBOM and signed provenance
STAGE_VERSIONS = {"install": 1, "boot": 1, "provision": 3, "final": 3}


def digest(obj: Any) -> str:
    """sha256 hex of `obj` as sorted, compact JSON (UTF-8)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()


def text_digest(text: str) -> str:
    """sha256 hex of a text's UTF-8 bytes."""
    return hashlib.sha256(text.encode()).hexdigest()


def file_digest(path: Path) -> str:
    """sha256 hex of a file's bytes; InputError naming the file when it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError as e:
        raise InputError(f"{path}: cannot be read ({e.strerror}); fix the path in the config") from None
    return h.hexdigest()


def store_salt(cache: Path) -> bytes:
    """The store's salt for keyed hashes of secrets (`secret-salt`, 32 random bytes,
    0600), made on first use."""
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
    return salt_file.read_bytes()


def secret_digest(secret: str, cache: Path, salt: bytes | None = None) -> str:
    """Keyed hash of a secret, so keys change with it but never reveal it.

    The salt is per store (`store_salt`), so a key published elsewhere cannot be used
    to guess a weak password offline; `salt` gives another store's (a remote build
    computes the keys of the client that asked for it).
    """
    return hmac.new(salt if salt is not None else store_salt(cache), secret.encode(), hashlib.sha256).hexdigest()


def family_digests(family: str) -> dict[str, Any]:
    """A family's built-in content: its templates (inputs unless a user template
    replaces them) and the boot and log parameters used for a detected boot."""
    if family == "custom":
        return {}
    from pim.engine.installers.families import builtin_template, get

    fam = get(family)
    return {
        "templates": {name: text_digest(builtin_template(family, name)) for name in fam.templates},
        "boot_params": fam.boot_params,
        "log_params": fam.log_params,
    }


def install_inputs(cfg: Config, spec: ImageSpec, iso_sha256: str, cache: Path, image: str,
                   salt: bytes | None = None) -> dict[str, Any]:
    """What the install stage's key hashes (JSON-able; the password only as a keyed hash).

    `image` is the image's name: templates get it as {{ image }} and, made a host
    name, as {{ hostname }}, which the installer writes into the guest.
    """
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
        "builtin": family_digests(inst.family.value),
        "answer_name": inst.answer_name,
        "vars": inst.vars,
        "settings": {k: getattr(inst, k) for k in ("mirror", "locale", "timezone", "keyboard")},
        "files": {name: file_digest(cfg.path(p)) for name, p in inst.files.items()},
        # Only when set, so that keys of configs without them stay as they were.
        **({"answer_file": file_digest(cfg.path(inst.answer_file))} if inst.answer_file else {}),
        **({"template_files": {name: file_digest(cfg.path(p)) for name, p in inst.template_files.items()}}
           if inst.template_files else {}),
        # How long to wait before typing changes no byte the installer writes.
        "boot": inst.boot.model_dump(mode="json", exclude={"command_delay"}) if inst.boot else None,
        "image": image,
        "ssh_user": spec.ssh.user,
        "ssh_password": secret_digest(password, cache, salt) if password else None,
    }


def boot_inputs(spec: ImageSpec, install_key: str, accel: str, qemu_version: str) -> dict[str, Any]:
    """The booted-guest snapshot: a saved machine state only restores into the same
    machine (memory, CPUs, accelerator, QEMU build), so all of those are inputs."""
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
        # The CPU model the state was saved with (aarch64 under TCG: `max,pauth-impdef=on`
        # since QEMU 6.0); only for aarch64, so x86_64 keys stay as they were.
        **({"cpu": _cpu(spec.arch.value, accel, qemu_version)} if spec.arch.value == "aarch64" else {}),
    }


def _cpu(arch: str, accel: str, qemu_version: str) -> str:
    from pim.engine.qemu.argv import cpu_model
    from pim.engine.qemu.img import release_of

    return cpu_model(arch, accel, release_of(qemu_version))


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


def guest_files() -> dict[str, str]:
    """Digests of the text PIM writes into every build guest."""
    from pim.engine.provenance.packages import QUERY

    return {"generalize": text_digest(guestfiles.GENERALIZE), "step_prelude": text_digest(guestfiles.STEP_PRELUDE),
            "package_query": text_digest(QUERY)}


def provision_inputs(cfg: Config, spec: ImageSpec, install_key: str) -> dict[str, Any]:
    """What the provision stage's key hashes."""
    return {
        "stage": "provision",
        "version": STAGE_VERSIONS["provision"],
        "install": install_key,
        "env": spec.env,
        "steps": [_step_inputs(cfg, s) for s in spec.provision],
        "finalize": spec.finalize.model_dump(mode="json"),
        "guest_files": guest_files(),
    }


def final_inputs(spec: ImageSpec, provision_key: str, compression: str) -> dict[str, Any]:
    """What the final stage's key hashes. `compression` is the one the artifact gets
    (`output.compression` with "auto" resolved on this host: zstd or zlib)."""
    return {
        "stage": "final",
        "version": STAGE_VERSIONS["final"],
        "provision": provision_key,
        "output": {**spec.output.model_dump(mode="json"), "compression": compression},
    }


@dataclass(frozen=True)
class StageKeys:
    """The keys of one build's image stages (64-character sha256 hex each), and
    `inputs`: {stage: the JSON-able inputs its key is the `digest` of}, which
    provenance records and `explain` compares."""

    install: str
    provision: str
    final: str
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False, repr=False)

    def as_dict(self) -> dict[str, str]:
        return {"install": self.install, "provision": self.provision, "final": self.final}


def stage_keys(cfg: Config, spec: ImageSpec, iso_sha256: str, cache: Path, image: str, *,
               compression: str, salt: bytes | None = None) -> StageKeys:
    """The install, provision and final keys of image `image` (its spec `spec`) built
    from an ISO with `iso_sha256`.

    `cache` is the store root (it holds the salt for the password's keyed hash;
    `salt` replaces it: a builder computes its client's keys);
    `compression` the artifact's resolved compression (see `final_inputs`).
    Raises InputError when a file the keys hash cannot be read.
    """
    inputs = {"install": install_inputs(cfg, spec, iso_sha256, cache, image, salt)}
    install = digest(inputs["install"])
    inputs["provision"] = provision_inputs(cfg, spec, install)
    provision = digest(inputs["provision"])
    inputs["final"] = final_inputs(spec, provision, compression)
    return StageKeys(install, provision, digest(inputs["final"]), inputs)


def boot_key(spec: ImageSpec, install_key: str, accel: str, qemu_version: str) -> str:
    """The boot snapshot's key (needs the accelerator verdict and QEMU's version)."""
    return digest(boot_inputs(spec, install_key, accel, qemu_version))
