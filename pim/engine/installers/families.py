"""Installer families: built-in answer files, boot parameters and console patterns.

A family is what PIM knows about one installer: which files it fetches, the
kernel command line that points it at them, and the serial-console lines that
mean it failed (so a build stops at once with the log tail) or moved on (so a
long install shows where it is). Kernel panics are caught by PIM for every family.
Where the installer can send its own log stream (d-i's remote syslog), the family
says how to ask for it and what its lines mean.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from pim.engine.guest.console import BASE_FAILURES, Patterns
from pim.engine.errors import Problem, SpecError
from pim.engine.installers import render


@dataclass(frozen=True)
class Family:
    name: str
    templates: Mapping[str, str]  # served file name -> built-in template file name
    answer_name: str  # the served file {{ answer_url }} points at
    boot_params: str  # Jinja; see layouts.py for the ISO-specific variables
    failure_patterns: tuple[str, ...]
    progress: tuple[tuple[str, str], ...]  # (regex, short label), in install order; console and log stream
    # The installer's own log stream (see syslog.py), where it can send one:
    log_params: str = ""  # Jinja, appended to detected boot params; {{ log_host }}, {{ log_port }}
    log_failures: tuple[str, ...] = ()  # log lines that end the build
    log_step: str | None = None  # group "step": the installer component that starts
    log_fetch: tuple[str, ...] = ()  # group "file": a download that starts (or fails)
    log_fetch_error: str | None = None  # the download named last failed

    def log_patterns(self, extra_failures: Sequence[str] = ()) -> Patterns:
        """What the install stage looks for in the family's log stream."""
        return Patterns(failures=(*BASE_FAILURES, *self.log_failures, *extra_failures), progress=self.progress,
                        step=self.log_step, fetch=self.log_fetch, fetch_error=self.log_fetch_error)


FAMILIES: dict[str, Family] = {
    "debian": Family(
        name="debian",
        templates={"preseed.cfg": "debian.preseed"},
        answer_name="preseed.cfg",
        # The hostname is on the command line because d-i configures the network
        # before it can fetch the preseed; interface=auto avoids the NIC question.
        boot_params="auto=true priority=critical url={{ answer_url }} interface=auto "
        "netcfg/hostname={{ hostname }} console={{ serial_console }},115200",
        failure_patterns=(
            r"Installation step failed",
            r"Failed to retrieve",
            r"Bad archive mirror",
            r"Failed to download",
            r"Unable to install (?:the selected kernel|GRUB|busybox)",
            r"Failed to (?:create a file system|partition)",
            r"Download debconf preconfiguration file.*failed",
        ),
        # Console dialog titles, and d-i's main menu items as its syslog names them.
        progress=(
            (r"successfully loaded preseed file", "preseed loaded"),
            (r"Loading additional components|Retrieving .*\.udeb|Menu item 'download-installer'",
             "installer components"),
            (r"Partition disks|Partitioning|Menu item 'partman-base'", "partitioning"),
            (r"Installing the base system|Menu item 'bootstrap-base'", "base system"),
            (r"Configuring the package manager|Configuring apt|Menu item 'apt-setup-udeb'", "package manager"),
            (r"Select and install software|Installing software|Menu item 'pkgsel'", "packages"),
            (r"Install(?:ing)? the GRUB boot loader|Menu item 'grub-installer'", "boot loader"),
            (r"Finishing the installation|Menu item 'finish-install'", "finishing"),
        ),
        # d-i's busybox syslogd forwards everything over UDP; the guest sees the
        # host's loopback as 10.0.2.2. Lines as they arrive (RFC 3164 minus host):
        #   main-menu[255]: INFO: Menu item 'download-installer' selected
        #   net-retriever: regular: pool/main/a/apt-setup/apt-mirror-setup_0.182_all.udeb /var/cache/anna/...
        #   anna[2858]: http://<mirror>/debian/pool/main/a/apt-setup/apt-mirror-setup_0.182_all.udeb:
        #   anna[2858]: 2026-11-26 12:53:45 ERROR 404: Not Found.
        #   anna[2858]: WARNING **: package retrieval failed
        log_params="log_host={{ log_host }} log_port={{ log_port }}",
        log_failures=(
            r"package retrieval failed",  # anna: a udeb could not be downloaded
            r"Configuring '[^']+' failed with error code",  # main-menu: "Installation step failed"
            r"\berror: exiting on error\b",  # base-installer, apt-setup, pkgsel...
            r"\b(?:[Ff]ailed|[Uu]nable) to (?:retrieve|download)\b|Couldn't (?:retrieve|download)\b",
            r"\berror: .*retriev",
            r"\bE: (?:Failed to fetch|Unable to fetch|Couldn't download)\b",  # apt in the target
        ),
        log_step=r"main-menu\[\d+\]: INFO: Menu item '(?P<step>[^']+)' selected",
        log_fetch=(
            r"net-retriever: \w+: (?P<file>\S+) /\S+$",
            r"^\S+: (?P<file>(?:https?|ftp)://\S+):$",  # wget names a URL alone only when it failed
            r"\bE: Failed to fetch (?P<file>\S+)",
        ),
        log_fetch_error=r"\bERROR \d{3}\b.*|\b(?:\d{3}\s+Not Found|Connection refused|Network is unreachable|"
                        r"bad address|Name or service not known|Connection timed out)\b",
    ),
    "ubuntu": Family(
        name="ubuntu",
        templates={"user-data": "ubuntu.user-data", "meta-data": "ubuntu.meta-data", "vendor-data": "ubuntu.vendor-data"},
        answer_name="user-data",
        # argv reaches QEMU unquoted, so ';' needs no escaping here (it does in a
        # GRUB menu entry). `autoinstall` skips subiquity's confirmation prompt.
        boot_params="autoinstall ds=nocloud;s={{ http_url }} console={{ serial_console }},115200",
        failure_patterns=(
            r"subiquity.*(?:[Cc]rash|Traceback)",
            r"Traceback \(most recent call last\)",
            r"An error occurred during installation",
            r"Sorry, there was a problem",
            r"curtin: Installation failed",
            r"Autoinstall(?:Validation)?Error|Malformed autoinstall",
            r"finish: subiquity/\S+: FAIL",
        ),
        progress=(
            (r"subiquity/Early|early-commands", "early commands"),
            (r"curtin command block-meta|subiquity/Install/install/partitioning", "partitioning"),
            (r"curtin command extract|subiquity/Install/install/extract", "copying the system"),
            (r"curtin command curthooks|subiquity/Install/install/curthooks", "configuring"),
            (r"subiquity/Install/install/(?:postinstall|install_package)|installing packages", "packages"),
            (r"subiquity/Late|late-commands", "late commands"),
        ),
    ),
    "kickstart": Family(
        name="kickstart",
        templates={"ks.cfg": "kickstart.ks"},
        answer_name="ks.cfg",
        # stage2 must name the ISO by its volume label: the CD is found by it.
        boot_params="inst.stage2=hd:LABEL={{ volume_id | iso_label }} inst.ks={{ answer_url }} inst.text "
        "console={{ serial_console }},115200",
        failure_patterns=(
            r"Traceback \(most recent call last\)",
            r"Pane is dead",
            r"The installation was stopped due to an error",
            r"There was an error running the kickstart script",
            r"[Kk]ickstart (?:insufficient|error)|KickstartParseError",
            r"Error populating transaction|Payload error|Failed to set up installation source",
            r"\banaconda\b.*\b(?:error|Error|ERROR)\b:",
        ),
        progress=(
            (r"Starting installer|anaconda .* started", "installer started"),
            (r"Configuring storage|Creating \w+ on /dev/", "partitioning"),
            (r"Installing the software|Installing .* \(\d+/\d+\)", "packages"),
            (r"Configuring installed system|Performing post-installation setup", "configuring"),
            (r"Installing boot ?loader", "boot loader"),
            (r"Running post-installation scripts", "post scripts"),
            (r"Installation complete", "finished"),
        ),
    ),
}

DEFAULTS: dict[str, Any] = {
    "mirror": "",  # empty: the installer's own default source
    "proxy_url": "",
    "locale": "en_US.UTF-8",
    "timezone": "UTC",
    "keyboard": "us",
    "ssh_user": "root",
    "ssh_password": None,
    "disk": "/dev/vda",
    "arch": "x86_64",
    "firmware": "bios",
}

_CHECKS: dict[str, tuple[str, str]] = {  # name -> (regex, rule)
    "hostname": (r"(?=.{1,63}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?", "a host name: letters, digits and '-', 1-63"),
    "ssh_user": (r"[a-z_][a-z0-9_-]{0,31}", "a POSIX user name: lower-case letters, digits, '_' and '-'"),
    "ssh_public_key": (r"(ssh|ecdsa|sk)-[\w@.-]+ [A-Za-z0-9+/=]+( [^\n\r]*)?", "one OpenSSH public key line"),
    "mirror": (r"(https?://[^\s'\"]+)?", "empty or an http(s) URL"),
    "proxy_url": (r"(http://[^\s'\"]+)?", "empty or an http URL"),
    "locale": (r"C(\.[A-Za-z0-9-]+)?|[a-z]{2,3}(_[A-Z]{2})?(\.[A-Za-z0-9-]+)?(@\w+)?", "a locale such as en_US.UTF-8"),
    "timezone": (r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*", "a time zone name such as UTC or Europe/Paris"),
    "keyboard": (r"[a-z]{2,8}", "an XKB layout such as us or de"),
    "disk": (r"/dev/[a-z][a-z0-9]*", "a whole-disk device such as /dev/vda"),
    "arch": (r"x86_64|aarch64", "x86_64 or aarch64"),
    "firmware": (r"bios|uefi", "bios or uefi"),
}


def get(family: str) -> Family:
    try:
        return FAMILIES[family]
    except KeyError:
        raise SpecError("installer", [Problem("family", f"unknown family {family!r}; "
                                               f"one of: {', '.join(sorted(FAMILIES))}")]) from None


def template_variables(variables: Mapping[str, Any]) -> dict[str, Any]:
    """variables with defaults filled in and derived values added; all problems at once.

    Derived: `ssh_password_hash` (SHA-512 crypt, None without a password) and
    `serial_console` (ttyAMA0 on aarch64, else ttyS0). A value that breaks a rule
    is quoted in the problem, except the password, which is never repeated.
    """
    merged = {**DEFAULTS, **{k: v for k, v in variables.items() if v is not None or k not in DEFAULTS}}
    problems = []
    for name, (pattern, rule) in _CHECKS.items():
        value = merged.get(name)
        if value is None:
            problems.append(Problem(name, f"is required ({rule})"))
        elif not isinstance(value, str) or not re.fullmatch(pattern, value):
            problems.append(Problem(name, f"{value!r} is not {rule}"))
    password = merged.get("ssh_password")
    if password is not None and (not isinstance(password, str) or not password or "\n" in password):
        problems.append(Problem("ssh_password", "must be a non-empty single-line string (value not shown)"))
    if problems:
        raise SpecError("installer variables", problems)
    if merged["arch"] == "aarch64":
        merged["firmware"] = "uefi"  # arm64 machines have no BIOS; "bios" is only the spec's default
    merged["serial_console"] = "ttyAMA0" if merged["arch"] == "aarch64" else "ttyS0"
    merged["ssh_password_hash"] = _hash(password, merged["ssh_user"]) if password else None
    return merged


def _hash(password: str, user: str) -> str:
    from pim.engine.installers.passwords import password_hash

    return password_hash(password, user)


def builtin_template(family: str, name: str) -> str:
    """The text of a built-in template, by the file name it is served as."""
    fam = get(family)
    if name not in fam.templates:
        raise SpecError("installer", [Problem("templates", f"family {family} serves no file {name!r}; "
                                                           f"it serves {', '.join(fam.templates)}")])
    return resources.files(__package__).joinpath("templates", fam.templates[name]).read_text()


def default_files(family: str, variables: Mapping[str, Any],
                  templates: Mapping[str, str] | None = None, skip: Collection[str] = ()) -> dict[str, bytes]:
    """Every file the family's installer fetches, rendered; name -> bytes.

    `templates` maps a served file name to the text of a user template that
    replaces the built-in one (e.g. {"preseed.cfg": open("my.preseed").read()});
    names in `skip` are left out (the caller serves its own file under them).
    """
    fam = get(family)
    overrides = dict(templates or {})
    unknown = sorted(set(overrides) - set(fam.templates))
    if unknown:
        raise SpecError("installer", [Problem(f"templates.{n}", f"family {family} serves no such file; "
                                                                f"it serves {', '.join(fam.templates)}")
                                      for n in unknown])
    values = template_variables(variables)
    files = {}
    for name in fam.templates:
        if name in skip:
            continue
        text = overrides.get(name)
        what = f"{family} {name} (your template)" if text is not None else f"built-in {family} {name}"
        files[name] = render(text if text is not None else builtin_template(family, name), values, what).encode()
    return files


def progress_label(family: str, line: str) -> str | None:
    """The label of the install step a console line announces, if any."""
    for pattern, label in get(family).progress:
        if re.search(pattern, line):
            return label
    return None
