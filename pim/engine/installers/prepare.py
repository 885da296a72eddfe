"""From an image spec to what the installer is given: served files, boot method,
rendered boot parameters and boot command, failure patterns. One place for the
custom and the built-in families, used by the install stage and by `pim validate`,
so that what validate accepts is what a build renders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pim.engine.config.spec import Boot, Config, Family, ImageSpec
from pim.engine.errors import InputError, Problem, SpecError
from pim.engine.installers import LITERAL_HINT, render

T = TypeVar("T")

# Said with a template error in a user's file: it can also be served as it is.
_USER_HINT = (LITERAL_HINT + "; or serve the file unrendered: installer.answer_file instead of installer.template, "
              "installer.files instead of installer.template_files")
_VERBATIM_LIMIT = 1 << 20  # verbatim files larger than this are not searched for the build key


@dataclass(frozen=True)
class Prepared:
    files: dict[str, bytes | Path]  # served name -> content (or a file to read when fetched)
    answer_name: str
    boot: Boot  # kernel/initrd/params as configured or detected; params still a template
    failure_patterns: list[str]
    variables: dict[str, Any]  # with the family's defaults and derived values
    params: str | None = None  # the rendered kernel command line (direct kernel boot only)
    command: list[str] = field(default_factory=list)  # the rendered boot command, checked key by key


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


def build_variables(spec: ImageSpec, image: str, *, hostname: str, ssh_public_key: str, http_url: str,
                    answer_url: str, proxy_url: str, log_host: str, log_port: int) -> dict[str, Any]:
    """Every variable a build gives templates, boot parameters and the boot command.

    `http_url` ends with '/' (the answer server's base); `answer_url` is the answer
    file's URL; `log_host`/`log_port` are where the installer's syslog goes.
    """
    return {**installer_variables(spec), "proxy_url": proxy_url, "image": image, "hostname": hostname,
            "ssh_public_key": ssh_public_key, "http_url": http_url, "answer_url": answer_url,
            "log_host": log_host, "log_port": log_port}


def prepare(cfg: Config, spec: ImageSpec, iso: Path | None, variables: dict[str, Any], *,
            check_login: bool = True) -> Prepared:
    """Render everything the installer is given, exactly as the build serves and types it.

    Answer file (the user's template, served-as-is file or the family's built-in),
    template_files, boot parameters (detected from `iso` when the spec has none; a
    placeholder layout when `iso` is None) and the boot command, checked against the
    key vocabulary. Then: does any served file authorize `ssh_public_key`, when no
    `ssh.password` is set? Raises SpecError listing every problem, each with its
    config path (`installer.template`) and the file, line and variable or token.
    """
    inst = spec.installer
    problems: list[Problem] = []

    def attempt(path: str, fn: Callable[[], T]) -> T | None:
        try:
            return fn()
        except SpecError as e:
            problems.extend(Problem(f"{path}.{p.path}".rstrip("."), p.message) for p in e.problems)
        except InputError as e:
            problems.append(Problem(path, str(e)))
        return None

    family = None
    values = variables
    if inst.family != Family.custom:
        from pim.engine.installers.families import get, template_variables

        family = get(inst.family.value)
        values = attempt("installer", lambda: template_variables(variables)) or {}
        if problems:
            raise SpecError("installer", problems)
    name = answer_name(spec)

    files: dict[str, bytes | Path] = {}
    if inst.answer_file:
        files[name] = cfg.path(inst.answer_file).read_bytes()
    elif inst.template:
        text = cfg.path(inst.template).read_text()
        rendered = attempt("installer.template", lambda: render(text, values, inst.template or "", _USER_HINT))
        files[name] = (rendered or "").encode()
    if family is not None:
        from pim.engine.installers.families import default_files

        files.update(attempt("installer", lambda: default_files(family.name, values, skip=set(files))) or {})
    for served, path in inst.template_files.items():
        text = cfg.path(path).read_text()
        rendered = attempt(f"installer.template_files.{served}", lambda: render(text, values, path, _USER_HINT))
        files[served] = (rendered or "").encode()
    files.update({served: cfg.path(p) for served, p in inst.files.items()})

    boot = inst.boot
    if boot is None:
        assert family is not None  # the spec gives custom a boot
        from pim.engine.installers.layouts import boot_params, detect

        layout = attempt("source.iso", lambda: detect(iso)) if iso is not None else None
        if layout is None:  # the ISO is downloaded at build time (or unreadable: reported above)
            boot = Boot(kernel="/detected-at-build-time", initrd="/detected-at-build-time",
                        params=boot_params(family.name, _PLACEHOLDER_VOLUME, spec.arch.value))
        else:
            boot = Boot(kernel=layout.kernel, initrd=layout.initrd, params=layout.params)
    params = None
    if boot.kernel:
        params = attempt("installer.boot.params", lambda: render(boot.params, values, "installer.boot.params"))
        if family and family.log_params and inst.boot is None and "log_host" in values and params is not None:
            log = attempt("installer", lambda: render(family.log_params, values, f"{family.name} log parameters"))
            params = f"{params} {log}"
    command = [attempt(f"installer.boot.command[{i}]", lambda: _command(chunk, values, i)) or ""
               for i, chunk in enumerate(boot.command or [])]

    if problems:
        raise SpecError("installer", problems)
    prepared = Prepared(files, name, boot, [*(family.failure_patterns if family else ()), *inst.failure_patterns],
                        values, params, command)
    login = login_problem(spec, prepared) if check_login else None
    if login:
        raise SpecError("installer", [login])
    return prepared


def login_problem(spec: ImageSpec, prepared: Prepared) -> Problem | None:
    """Why a build could never log in (no ssh.password, and no served file authorizes
    the build key `ssh_public_key` the way the installer reads it), or None."""
    values = prepared.variables
    key = values.get("ssh_public_key")
    if values.get("ssh_password") or not isinstance(key, str):
        return None
    from pim.engine.installers.validate import authorizes

    texts = {}
    for served, content in prepared.files.items():
        if isinstance(content, Path):
            if content.stat().st_size > _VERBATIM_LIMIT:
                return None  # cannot tell; the file may well carry the key
            content = content.read_bytes()
        texts[served] = content.decode("utf-8", "replace")
    found, note = authorizes(spec.installer.family.value, prepared.answer_name, texts, key)
    if found:
        return None
    return Problem("installer", f"no served file authorizes the build key and ssh.password is unset, so the build "
                                f"could never log in{note}: write {{{{ ssh_public_key }}}} into the build user's "
                                "authorized_keys from the answer template (as the built-in templates do), or set "
                                "ssh.password to the password the answer file gives user "
                                f"{values.get('ssh_user', 'root')!r}")


def _command(chunk: str, values: dict[str, Any], index: int) -> str:
    from pim.engine.qemu.qmp import boot_command_actions

    where = f"installer.boot.command[{index}]"
    typed = render(chunk, values, where)
    boot_command_actions(typed, where)
    return typed


# Stand-ins for what only a running build knows; shaped like the real values.
_PLACEHOLDER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPlaceholderKeyForValidation pim-validate"
_PLACEHOLDER_URL = "http://10.0.2.2:8000/validate/"
_PLACEHOLDER_VOLUME = "PIM-VALIDATE"


def check_answers(cfg: Config, image: str, notes: list[str] | None = None) -> list[Problem]:
    """Render an image's answer files, boot parameters and boot command as a build
    would (placeholder key, URLs and ports) and check the answer files with the
    installer's own tooling (debconf, pykickstart, subiquity's schema).

    `notes`, when given, receives lines starting "note: " (what was checked how: the
    kickstart syntax version and where it came from, subiquity's schema or PIM's rules;
    what this host could not check) and "warning: " (accepted, but likely a mistake:
    a preseed question set twice).
    """
    from pim.engine.pipeline.context import hostname_for

    spec = cfg.image(image)
    variables = build_variables(spec, image, hostname=hostname_for(image), ssh_public_key=_PLACEHOLDER_KEY,
                                http_url=_PLACEHOLDER_URL, answer_url=_PLACEHOLDER_URL + answer_name(spec),
                                proxy_url="", log_host="10.0.2.2", log_port=5140)
    where = f"images.{image}"
    iso = None if spec.source.is_url else cfg.path(spec.source.iso)  # a URL is fetched by the build only
    try:
        prepared = prepare(cfg, spec, iso, variables, check_login=False)
    except SpecError as e:
        return [Problem(f"{where}.{p.path}", p.message) for p in e.problems]
    except InputError as e:
        return [Problem(f"{where}.installer", str(e))]
    problems = []
    if spec.installer.family != Family.custom:
        from pim.engine.installers.validate import check

        rendered = {k: v for k, v in prepared.files.items() if isinstance(v, bytes)}
        secrets = [variables["ssh_password"]] if variables.get("ssh_password") else []
        options = {}
        said = notes if notes is not None else []
        if spec.installer.family == Family.kickstart:
            options["kickstart_version"], origin = kickstart_version(spec, iso)
            said.append(f"note: {where}: kickstart checked as {options['kickstart_version']} ({origin})")
        report = check(spec.installer.family.value, rendered, secrets=secrets, **options)
        problems += [Problem(f"{where}.installer", p) for p in report.problems]
        said += [f"note: {where}: {note}" for note in report.notes]
        said += [f"warning: {where}: {warning}" for warning in report.warnings]
    login = login_problem(spec, prepared)
    return problems + ([Problem(f"{where}.{login.path}", login.message)] if login else [])


def kickstart_version(spec: ImageSpec, iso: Path | None) -> tuple[str, str]:
    """(pykickstart syntax version, where it came from): `installer.kickstart_version`,
    else the ISO's `.treeinfo`, else validate.DEFAULT_KICKSTART_VERSION."""
    from pim.engine.installers.validate import DEFAULT_KICKSTART_VERSION, kickstart_version_from_treeinfo

    if spec.installer.kickstart_version:
        return spec.installer.kickstart_version, "installer.kickstart_version"
    if iso is not None:
        from pim.engine.source.iso import read_text

        try:
            treeinfo = read_text(iso, "/.treeinfo")
        except InputError:
            treeinfo = None
        version = kickstart_version_from_treeinfo(treeinfo) if treeinfo else None
        if version:
            return version, "the ISO's .treeinfo"
    return DEFAULT_KICKSTART_VERSION, ("the default; set installer.kickstart_version or use a local ISO with a "
                                       ".treeinfo to check for another release")
