"""From an image spec to what the installer is given: served files, boot method,
failure patterns. One place for the custom and the built-in families, used by the
install stage and by `pim validate`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pim.engine.errors import InputError, Problem
from pim.engine.installers import render
from pim.engine.config.spec import Boot, Config, Family, ImageSpec


@dataclass(frozen=True)
class Prepared:
    files: dict[str, bytes | Path]  # served name -> content (or a file to read when fetched)
    answer_name: str
    boot: Boot  # kernel/initrd/params still hold {{ answer_url }} and friends
    failure_patterns: list[str]
    variables: dict[str, Any]  # with the family's defaults and derived values


def answer_name(spec: ImageSpec) -> str:
    inst = spec.installer
    if inst.family == Family.custom:
        return inst.answer_name
    from pim.engine.installers.families import get

    return get(inst.family.value).answer_name


def installer_variables(spec: ImageSpec) -> dict[str, Any]:
    """Template variables that come from the spec (the build adds key, URLs, proxy)."""
    inst = spec.installer
    settings = {k: getattr(inst, k) for k in ("mirror", "locale", "timezone", "keyboard") if getattr(inst, k)}
    return {
        **inst.vars,
        **settings,
        "arch": spec.arch.value,
        "firmware": spec.firmware.value,
        "ssh_user": spec.ssh.user,
        "ssh_password": spec.ssh.password.get_secret_value() if spec.ssh.password else None,
    }


def prepare(cfg: Config, spec: ImageSpec, iso: Path | None, variables: dict[str, Any]) -> Prepared:
    """Render the answer files; detect the boot layout from the ISO when the spec has none."""
    inst = spec.installer
    user_template = cfg.path(inst.template).read_text() if inst.template else None
    extra: dict[str, bytes | Path] = {name: cfg.path(p) for name, p in inst.files.items()}
    if inst.family == Family.custom:
        assert user_template is not None and inst.boot is not None  # the spec enforces both
        answer = render(user_template, variables, str(cfg.path(inst.template or "")))
        return Prepared({inst.answer_name: answer.encode(), **extra}, inst.answer_name, inst.boot,
                        list(inst.failure_patterns), variables)

    from pim.engine.installers.families import default_files, get, template_variables

    family = get(inst.family.value)
    values = template_variables(variables)
    overrides = {family.answer_name: user_template} if user_template is not None else None
    files: dict[str, bytes | Path] = {**default_files(family.name, values, overrides), **extra}
    boot = inst.boot
    if boot is None:
        if iso is None:
            boot = Boot(kernel="/detected-at-build-time", initrd="/detected-at-build-time", params=family.boot_params)
        else:
            from pim.engine.installers.layouts import detect

            layout = detect(iso)
            boot = Boot(kernel=layout.kernel, initrd=layout.initrd, params=layout.params)
    return Prepared(files, family.answer_name, boot, [*family.failure_patterns, *inst.failure_patterns], values)


# Stand-ins for what only a running build knows; shaped like the real values.
_PLACEHOLDER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPlaceholderKeyForValidation pim-validate"
_PLACEHOLDER_URL = "http://10.0.2.2:8000/validate/"


def check_answers(cfg: Config, image: str) -> list[Problem]:
    """Render an image's answer files as a build would and check them with the
    installer's own tooling (debconf, pykickstart, subiquity's schema)."""
    from pim.engine.errors import SpecError
    from pim.engine.pipeline.context import hostname_for

    spec = cfg.image(image)
    if spec.installer.family == Family.custom:
        return []
    from pim.engine.installers.validate import check

    variables = {**installer_variables(spec), "proxy_url": "", "image": image, "hostname": hostname_for(image),
                 "ssh_public_key": _PLACEHOLDER_KEY, "http_url": _PLACEHOLDER_URL,
                 "answer_url": _PLACEHOLDER_URL + answer_name(spec)}
    where = f"images.{image}.installer"
    try:
        prepared = prepare(cfg, spec, None, variables)
    except SpecError as e:
        return [Problem(f"{where}.{p.path}".rstrip("."), p.message) for p in e.problems]
    except InputError as e:
        return [Problem(where, str(e))]
    rendered = {k: v for k, v in prepared.files.items() if isinstance(v, bytes)}
    secrets = [variables["ssh_password"]] if variables.get("ssh_password") else []
    return [Problem(where, p) for p in check(spec.installer.family.value, rendered, secrets=secrets).problems]
