"""Check answer files offline with the installers' own tooling, before any VM starts.

- preseed: Debian's own parser, `debconf-set-selections --checkonly`;
- kickstart: pykickstart, anaconda's own parser, with the release's syntax handler;
- autoinstall: subiquity's JSON schema (`../shared/data/` beside the repository
  when present), plus the delivery checks subiquity makes on cloud-init user-data;
- and the shell scripts each file embeds (late commands, %post) with `sh -n`.

A problem found means the installer would refuse the file or misread it; every
problem is reported, not only the first. Known secrets are masked in messages,
since validators quote the lines they reject.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pim.engine.events import Secrets
from pim.engine.installers.families import get

SCHEMA_PATH = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "subiquity-autoinstall-schema.json"
SCHEMA_ENV = "PIM_AUTOINSTALL_SCHEMA"  # path of subiquity's autoinstall JSON schema, where the user has it
DEFAULT_KICKSTART_VERSION = "RHEL9"
# debconf-set-selections' own lists, for hosts without it.
_DEBCONF_TYPES = {"select", "boolean", "string", "multiselect", "note", "password", "text", "title", "seen"}


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was checked how; what could not be, and why
    warnings: list[str] = field(default_factory=list)  # accepted, but likely not what the author meant


def validate(family: str, rendered: str | Mapping[str, bytes | str], **options: Any) -> list[str]:
    """Problems in a family's rendered answer file(s); empty when the installer accepts them."""
    return check(family, rendered, **options).problems


def check(family: str, rendered: str | Mapping[str, bytes | str], *, secrets: Iterable[str] = (),
          kickstart_version: str = DEFAULT_KICKSTART_VERSION, schema_path: Path | None = None) -> Report:
    """Like validate, with notes on what could not be checked on this host."""
    fam = get(family)
    files = {fam.answer_name: rendered} if isinstance(rendered, str) else dict(rendered)
    texts = {name: v.decode() if isinstance(v, bytes) else v for name, v in files.items()}
    report = Report()
    if fam.answer_name not in texts:
        report.problems.append(f"{fam.answer_name}: missing (the {family} installer fetches it first)")
    elif family == "debian":
        _preseed(texts[fam.answer_name], fam.answer_name, report)
    elif family == "kickstart":
        _kickstart(texts[fam.answer_name], fam.answer_name, kickstart_version, report)
    else:
        _autoinstall(texts, schema_path or _schema_path(), report)
    masked = Secrets(secrets, min_length=1, live=False)
    report.problems = [masked.redact(problem) for problem in report.problems]
    return report


def _schema_path() -> Path:
    # subiquity's licence keeps its schema out of the project: users point at their copy.
    override = os.environ.get(SCHEMA_ENV)
    return Path(override) if override else SCHEMA_PATH


# --- preseed -------------------------------------------------------------------

def _preseed(text: str, name: str, report: Report) -> None:
    tool = shutil.which("debconf-set-selections")
    if tool:
        from pim.engine.run import run

        out = run([tool, "--checkonly"], input=text.encode(), check=False, timeout=60)
        for line in out.stdout.splitlines():
            if line.startswith(("error:", "warning:")):
                report.problems.append(f"{name}: {line}")
        if out.returncode != 0 and not report.problems:
            report.problems.append(f"{name}: debconf-set-selections rejected the file (exit {out.returncode})")
    else:
        report.notes.append("debconf-set-selections not found (package debconf): preseed format checked "
                            "with PIM's copy of its rules only")
    for question, settings in preseed_answers(text).items():
        if len(settings) > 1:  # d-i keeps the last answer only
            lines = ", ".join(str(line) for line, _ in settings)
            report.warnings.append(f"{name}: {question} is set on lines {lines}; only line {settings[-1][0]} counts")
    for lineno, entry in _preseed_lines(text):
        if entry is None:
            if tool is None:
                report.problems.append(f"{name}: line {lineno}: not 'owner question type value'")
            continue
        _owner, question, qtype, value = entry
        if tool is None and qtype not in _DEBCONF_TYPES:
            report.problems.append(f"{name}: line {lineno}: unknown type {qtype!r} for {question}")
        # debconf stores any string; d-i then reads anything but "true" as false.
        if qtype == "boolean" and value not in ("true", "false"):
            report.problems.append(f"{name}: line {lineno}: {question} is a boolean: "
                                   f"'true' or 'false', not {value!r}")
        if question.endswith("/early_command") or question == "preseed/late_command":
            _shell(value, f"{name}: line {lineno}: {question}", report)


def _preseed_lines(text: str) -> Iterable[tuple[int, tuple[str, str, str, str] | None]]:
    """(first line number, (owner, question, type, value) or None if malformed); continuations joined."""
    pending, start = "", 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        if not pending:
            start = lineno
        if raw.endswith("\\"):
            pending += raw[:-1]
            continue
        line, pending = pending + raw, ""
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = re.match(r"\s*(\S+)\s+(\S+)\s+(\S+)(?:\s(.*))?$", line)
        yield start, (m[1], m[2], m[3], (m[4] or "").strip()) if m else None


def preseed_answers(text: str) -> dict[str, list[tuple[int, str]]]:
    """question -> every (line, value) that sets it, in file order; d-i keeps only the last."""
    answers: dict[str, list[tuple[int, str]]] = {}
    for lineno, entry in _preseed_lines(text):
        if entry is not None:
            answers.setdefault(entry[1], []).append((lineno, entry[3]))
    return answers


# --- can the build log in? -------------------------------------------------------

def authorizes(family: str, answer: str, texts: Mapping[str, str], key: str) -> tuple[bool, str]:
    """Whether a served file can put `key` (an OpenSSH public key line) in place, as
    the installer will read it: a preseed answer only counts in the last line that
    sets its question, a comment never counts. Returns (found, why not: "" or a
    parenthesised note naming the overridden line)."""
    words = key.split()
    blob = words[1] if len(words) > 1 else key
    note = ""
    for served, text in texts.items():
        if family == "debian" and served == answer:
            for question, settings in preseed_answers(text).items():
                if blob in settings[-1][1]:
                    return True, ""
                earlier = next((line for line, value in settings[:-1] if blob in value), None)
                if earlier is not None:
                    note = (f" ({answer} line {earlier} authorizes it in {question}, but line {settings[-1][0]} "
                            f"sets {question} again and only the last counts)")
        elif blob in "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")):
            return True, ""
    return False, note


# --- kickstart -----------------------------------------------------------------

def _kickstart(text: str, name: str, version: str, report: Report) -> None:
    from pykickstart.errors import KickstartVersionError
    from pykickstart.parser import KickstartParser
    from pykickstart.version import makeVersion

    try:
        handler = makeVersion(version)
    except KickstartVersionError:
        report.problems.append(f"{name}: pykickstart has no syntax version {version!r} (e.g. RHEL9, F40)")
        return

    class Collecting(KickstartParser):
        # pykickstart's non-fatal mode prints each error and goes on; keep them instead.
        def _tryFunc(self, fn: Any) -> None:
            try:
                fn()
            except Exception as e:  # noqa: BLE001 (pykickstart's own _tryFunc catches all, too)
                report.problems.append(_ks_problem(name, e, self._line))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parser = Collecting(handler, followIncludes=False, errorsAreFatal=False, unknownSectionIsFatal=True)
        try:
            parser.readKickstartFromString(text)
        except Exception as e:  # noqa: BLE001 (a section-level error stops the parser)
            report.problems.append(_ks_problem(name, e, parser._line))
    for w in caught:
        # ksvalidator fails on these too: deprecated syntax is removed in the next release.
        if w.category.__module__.startswith("pykickstart"):
            report.problems.append(f"{name}: {w.category.__name__}: {_one_line(w.message)}")
    for script in getattr(parser.handler, "scripts", []):
        # Checked with the interpreter anaconda runs it with (/bin/sh is bash there, too).
        where = f"{name}: line {script.lineno}: %{_SECTIONS.get(script.type, 'script')}"
        if script.interp in ("/bin/sh", "/bin/bash", "/usr/bin/bash", "/usr/bin/sh"):
            _shell(script.script, where, report, shell="bash")
        elif re.fullmatch(r"/usr/(?:libexec/platform-)?(?:bin/)?python3?(?:\.\d+)?", script.interp or ""):
            try:  # compiled, never run
                compile(script.script, where, "exec")
            except SyntaxError as e:
                report.problems.append(f"{where}: python syntax: line {e.lineno}: {e.msg}")
        else:
            report.notes.append(f"{where}: interpreter {script.interp} not checked")


_SECTIONS = {0: "pre", 1: "post", 2: "traceback", 3: "pre-install", 4: "onerror"}  # pykickstart.constants


def kickstart_version_from_treeinfo(text: str) -> str | None:
    """pykickstart's syntax version for the release a `.treeinfo` describes, or None.

    Reads `[release] name/version` (treeinfo 1.x) or `[general] family/version`:
    Fedora N -> FN; RHEL and its rebuilds (Rocky, Alma, CentOS Stream, Oracle) N -> RHELN.
    """
    import configparser

    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(text)
    except configparser.Error:
        return None
    for section, name_key in (("release", "name"), ("general", "family")):
        name = parser.get(section, name_key, fallback="")
        version = parser.get(section, "version", fallback="")
        major = re.match(r"\d+", version)
        if name and major:
            return f"F{major[0]}" if "fedora" in name.lower() else f"RHEL{major[0]}"
    return None


def _ks_problem(name: str, error: Exception, line: str) -> str:
    where = f"line {error.lineno}: " if getattr(error, "lineno", None) else ""
    words = line.split()
    command = f"{words[0]}: " if words else ""
    message = getattr(error, "message", None) or f"{type(error).__name__}: {error}"
    return f"{name}: {where}{command}{_one_line(message)}"


def _shell(script: str, where: str, report: Report, shell: str = "sh") -> None:
    """Shell syntax of a script the installer will run (`shell -n`: parsed, never run).

    `shell` is what the installer runs it with: "sh" (d-i's busybox ash, subiquity's
    dash) or "bash" (anaconda, whose /bin/sh is bash too).
    """
    sh = shutil.which(shell)
    if sh is None:
        report.notes.append(f"{shell} not found: {where} not checked")
        return
    from pim.engine.run import run

    out = run([sh, "-n"], input=script.encode(), check=False, timeout=30)
    if out.returncode != 0:
        report.problems.append(f"{where}: shell syntax: "
                               f"{_one_line(out.stdout) or f'{shell} -n exit {out.returncode}'}")


def _one_line(message: object) -> str:
    return " ".join(str(message).split())


# --- autoinstall ---------------------------------------------------------------

# Autoinstall keys that are also cloud-config keys may stand outside `autoinstall:`;
# subiquity rejects the others there, as a sign of a file written for another delivery.
_SHARED_WITH_CLOUD_CONFIG = {"locale", "timezone", "keyboard", "packages", "apt", "ssh", "snaps", "network",
                             "ubuntu-advantage", "ubuntu-pro", "reporting"}
_COMMAND_LISTS = ("early-commands", "late-commands", "error-commands")
# The documented top-level keys, for hosts without the schema file.
_DOCUMENTED_KEYS = {"version", "interactive-sections", "early-commands", "reporting", "error-commands", "user-data",
                    "packages", "debconf-selections", "locale", "refresh-installer", "kernel", "kernel-crash-dumps",
                    "keyboard", "zdevs", "source", "network", "ubuntu-pro", "ubuntu-advantage", "proxy", "apt",
                    "storage", "identity", "ssh", "snaps", "active-directory", "codecs", "drivers", "oem",
                    "timezone", "updates", "late-commands", "shutdown"}


def _autoinstall(texts: Mapping[str, str], schema_path: Path, report: Report) -> None:
    import yaml

    text = texts["user-data"]
    if not text.startswith("#cloud-config"):
        report.problems.append("user-data: must start with '#cloud-config' (cloud-init ignores it otherwise)")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        report.problems.append(f"user-data: not YAML: {_one_line(e)}")
        return
    for name in ("meta-data", "vendor-data"):
        if name in texts:
            try:
                yaml.safe_load(texts[name])
            except yaml.YAMLError as e:
                report.problems.append(f"{name}: not YAML: {_one_line(e)}")
    if not isinstance(data, dict) or not isinstance(data.get("autoinstall"), dict):
        report.problems.append("user-data: no 'autoinstall:' mapping at the top level")
        return
    auto = data["autoinstall"]
    schema = _load_schema(schema_path, report)
    known = set(schema["properties"]) if schema else _DOCUMENTED_KEYS
    misplaced = sorted((set(data) & known) - _SHARED_WITH_CLOUD_CONFIG - {"autoinstall"})
    for key in misplaced:
        report.problems.append(f"user-data: {key!r} belongs under 'autoinstall:', not beside it")
    for key in _COMMAND_LISTS:
        commands = auto.get(key)
        for index, command in enumerate(commands if isinstance(commands, list) else []):
            if isinstance(command, str):  # subiquity runs these with sh -c; lists are argv
                _shell(command, f"autoinstall.{key}.{index}", report)
    if schema is not None:
        report.notes.append(f"autoinstall checked against subiquity's JSON schema ({schema_path})")
        _schema_problems(auto, schema, report)
    else:
        _required_problems(auto, report)
    for key in sorted(set(auto) - known):
        report.problems.append(f"autoinstall.{key}: unknown key (subiquity ignores it in version 1 "
                               "and rejects it in later versions)")
    if "identity" not in auto and "user-data" not in auto and not auto.get("interactive-sections"):
        report.problems.append("autoinstall: needs 'identity' or 'user-data' (subiquity stops to ask otherwise)")


def _load_schema(path: Path, report: Report) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        report.notes.append(f"autoinstall checked against PIM's own rules for the documented keys: subiquity's "
                            f"JSON schema not available ({path}: {e}); set {SCHEMA_ENV} to its path")
        return None


def _schema_problems(auto: dict[str, Any], schema: dict[str, Any], report: Report) -> None:
    import jsonschema

    validator = jsonschema.validators.validator_for(schema)(schema)
    for error in sorted(validator.iter_errors(auto), key=lambda e: list(e.absolute_path)):
        where = ".".join(["autoinstall", *map(str, error.absolute_path)])
        report.problems.append(f"{where}: {_one_line(error.message)}")


def _required_problems(auto: dict[str, Any], report: Report) -> None:
    """The documented rules, for hosts without the schema file."""
    def bad(where: str, rule: str) -> None:
        report.problems.append(f"autoinstall.{where}: {rule} (full schema not available)")

    if auto.get("version") != 1 or type(auto.get("version")) is not int:
        bad("version", f"must be the integer 1, not {auto.get('version')!r}")
    identity = auto.get("identity")
    if identity is not None:
        if not isinstance(identity, dict):
            bad("identity", "must be a mapping")
        else:
            for key in ("username", "hostname", "password"):
                if not isinstance(identity.get(key), str):
                    bad(f"identity.{key}", "is required, a string")
    if "user-data" in auto and not isinstance(auto["user-data"], dict):
        bad("user-data", "must be a mapping (cloud-config)")
    ssh = auto.get("ssh")
    if ssh is not None:
        if not isinstance(ssh, dict):
            bad("ssh", "must be a mapping")
        else:
            for key in ("install-server", "allow-pw"):
                if key in ssh and not isinstance(ssh[key], bool):
                    bad(f"ssh.{key}", "must be true or false")
            keys = ssh.get("authorized-keys", [])
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                bad("ssh.authorized-keys", "must be a list of strings")
    if "storage" in auto and not isinstance(auto["storage"], dict):
        bad("storage", "must be a mapping")
    for key in _COMMAND_LISTS:
        commands = auto.get(key, [])
        ok = isinstance(commands, list) and all(
            isinstance(c, str) or (isinstance(c, list) and all(isinstance(a, str) for a in c)) for c in commands)
        if not ok:
            bad(key, "must be a list of commands, each a string or a list of strings")
    if "shutdown" in auto and auto["shutdown"] not in ("reboot", "poweroff"):
        bad("shutdown", "must be 'reboot' or 'poweroff'")
