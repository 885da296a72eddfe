import os
import shutil
from pathlib import Path

import pytest

from pim.engine.installers import validate as v
from pim.engine.installers.families import default_files
from tests.installers.helpers import CASES, PASSWORD, case_files, case_id, variables

HAS_DEBCONF = shutil.which("debconf-set-selections") is not None
SH = shutil.which("sh")  # dash on Debian: its messages are what the test expects
KS_VERSIONS = ["RHEL8", "RHEL9", "RHEL10", "F40", "F42"]


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("family", ["debian", "ubuntu", "kickstart"])
def test_default_templates_pass_their_installers_checks(family: str, case: dict) -> None:
    files = case_files(family, case)
    # Every kickstart syntax for two cases; the rest against the usual target.
    every = family == "kickstart" and case in CASES[:2]
    for version in KS_VERSIONS if every else [v.DEFAULT_KICKSTART_VERSION]:
        report = v.check(family, files, kickstart_version=version)
        assert report.problems == [], version
    if family == "ubuntu" and v.SCHEMA_PATH.is_file():
        assert report.notes == [f"autoinstall checked against subiquity's JSON schema ({v.SCHEMA_PATH})"]


def test_schema_is_read_from_shared_data_beside_the_repository() -> None:
    repo = Path(__file__).resolve().parents[2]
    assert v.SCHEMA_PATH == repo.parent / "shared" / "data" / "subiquity-autoinstall-schema.json"


# --- preseed -------------------------------------------------------------------

BROKEN_PRESEED = """\
d-i debian-installer/locale string en_US.UTF-8
d-i passwd/root-login bolean true
d-i grub-installer/only_debian
d-i clock-setup/utc boolean yes
"""


@pytest.mark.skipif(not HAS_DEBCONF, reason="debconf-set-selections not installed (package debconf)")
def test_debconf_rejects_a_bad_type_and_a_malformed_line() -> None:
    problems = v.validate("debian", BROKEN_PRESEED)
    assert problems == [
        "preseed.cfg: warning: Unknown type bolean, skipping line 2",
        "preseed.cfg: error: parse error on line 3: 'd-i grub-installer/only_debian'",
        "preseed.cfg: line 4: clock-setup/utc is a boolean: 'true' or 'false', not 'yes'",
    ]


def test_without_debconf_the_same_rules_apply_and_a_note_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(v.shutil, "which", lambda name: None)
    report = v.check("debian", BROKEN_PRESEED)
    assert report.problems == [
        "preseed.cfg: line 2: unknown type 'bolean' for passwd/root-login",
        "preseed.cfg: line 3: not 'owner question type value'",
        "preseed.cfg: line 4: clock-setup/utc is a boolean: 'true' or 'false', not 'yes'",
    ]
    assert "debconf-set-selections not found" in report.notes[0]


@pytest.mark.skipif(not HAS_DEBCONF, reason="debconf-set-selections not installed (package debconf)")
def test_known_secrets_are_masked_in_problems() -> None:
    problems = v.validate("debian", f"d-i passwd/root-password {PASSWORD}\n", secrets=[PASSWORD])
    assert problems == ["preseed.cfg: warning: Unknown type ********, skipping line 1"]


# --- kickstart -----------------------------------------------------------------

def good_kickstart() -> str:
    return default_files("kickstart", variables())["ks.cfg"].decode()


def test_kickstart_unknown_command_and_bad_option_are_both_reported() -> None:
    text = good_kickstart().replace("skipx\n", "skipx\nfrobnicate --now\n").replace(
        "autopart --type=plain", "autopart --tpye=plain")
    lines = text.splitlines()
    autopart, frob = lines.index("autopart --tpye=plain --nohome --noswap") + 1, lines.index("frobnicate --now") + 1
    assert v.validate("kickstart", text) == [
        f"ks.cfg: line {autopart}: autopart: unrecognized arguments: --tpye=plain",
        f"ks.cfg: line {frob}: frobnicate: Unknown command: frobnicate",
    ]
    # A command pykickstart knows only as an alias of others fails inside pykickstart itself.
    [problem] = v.validate("kickstart", "method\n", kickstart_version="RHEL8")
    assert problem.startswith("ks.cfg: method: TypeError")


def test_kickstart_syntax_depends_on_the_release() -> None:
    text = good_kickstart().replace("skipx\n", "skipx\nautostep\n")  # deprecated in RHEL 9, gone in 10
    line = text.splitlines().index("autostep") + 1
    assert v.validate("kickstart", text, kickstart_version="RHEL8") == []
    [problem] = v.validate("kickstart", text, kickstart_version="RHEL9")
    assert problem.startswith(f"ks.cfg: KickstartDeprecationWarning: Ignoring deprecated command on line {line}:")
    assert v.validate("kickstart", text, kickstart_version="RHEL10") == [
        f"ks.cfg: line {line}: autostep: autostep has been removed."]
    assert v.validate("kickstart", text, kickstart_version="RHEL99") == [
        "ks.cfg: pykickstart has no syntax version 'RHEL99' (e.g. RHEL9, F40)"]


def test_kickstart_unknown_section() -> None:
    [problem] = v.validate("kickstart", good_kickstart() + "%postinstall\ntrue\n%end\n")
    assert "Unknown kickstart section: %postinstall" in problem


@pytest.mark.skipif(SH is None or not os.path.realpath(SH).endswith("dash"), reason="messages are dash's")
def test_embedded_shell_scripts_are_parsed() -> None:
    ks = good_kickstart().replace("%post --erroronfail\nset -eu\n", "%post --erroronfail\nset -eu\nif then\n")
    [problem] = v.validate("kickstart", ks)
    line = ks.splitlines().index("%post --erroronfail") + 1
    # anaconda runs %post with bash: bash's parser, bash's message.
    bash = shutil.which("bash")
    assert problem == (f"ks.cfg: line {line}: %post: shell syntax: {bash}: line 2: syntax error near unexpected "
                       f"token `then' {bash}: line 2: `if then'")
    preseed = default_files("debian", variables())["preseed.cfg"].decode().replace("    true\n", "    true; fi\n")
    [problem] = v.validate("debian", preseed)
    line = preseed.splitlines().index("d-i preseed/late_command string \\") + 1
    assert problem == f'preseed.cfg: line {line}: preseed/late_command: shell syntax: {SH}: 1: Syntax error: "fi" unexpected'
    user_data = good_user_data().replace("      set -eu\n", "      set -eu\n      done\n")
    [problem] = v.validate("ubuntu", user_data)
    assert problem == f'autoinstall.late-commands.0: shell syntax: {SH}: 2: Syntax error: "done" unexpected'


# --- autoinstall ---------------------------------------------------------------

def good_user_data(**options: object) -> str:
    return default_files("ubuntu", variables(**options))["user-data"].decode()


@pytest.mark.skipif(not v.SCHEMA_PATH.is_file(), reason="subiquity schema not in ../shared/data")
def test_autoinstall_version_2_and_an_unknown_key_fail_against_the_schema() -> None:
    text = good_user_data().replace("  version: 1\n", "  version: 2\n  frobnicate: true\n")
    assert v.validate("ubuntu", {"user-data": text}) == [
        "autoinstall.version: 2 is greater than the maximum of 1",
        "autoinstall.frobnicate: unknown key (subiquity ignores it in version 1 and rejects it in later versions)",
    ]


@pytest.mark.skipif(not v.SCHEMA_PATH.is_file(), reason="subiquity schema not in ../shared/data")
def test_autoinstall_schema_types_and_required_keys() -> None:
    text = good_user_data().replace("  user-data:\n    disable_root: false\n",
                                    "  identity:\n    username: admin\n    hostname: web1\n").replace(
        "    install-server: true\n", "    install-server: 'yes'\n")
    assert v.validate("ubuntu", text) == [
        "autoinstall.identity: 'password' is a required property",
        "autoinstall.ssh.install-server: 'yes' is not of type 'boolean'",
    ]


def test_autoinstall_delivery_checks() -> None:
    text = good_user_data().replace("#cloud-config\n", "") + "storage:\n  layout: {name: lvm}\n"
    problems = v.validate("ubuntu", text)
    assert problems[0] == "user-data: must start with '#cloud-config' (cloud-init ignores it otherwise)"
    assert "user-data: 'storage' belongs under 'autoinstall:', not beside it" in problems
    assert v.validate("ubuntu", "#cloud-config\nhostname: x\n") == [
        "user-data: no 'autoinstall:' mapping at the top level"]
    assert v.validate("ubuntu", {"meta-data": "x"}) == ["user-data: missing (the ubuntu installer fetches it first)"]


def test_without_the_schema_the_documented_rules_apply(tmp_path: Path) -> None:
    text = good_user_data().replace("  version: 1\n", "  version: 2\n  frobnicate: true\n").replace(
        "  shutdown: poweroff\n", "  shutdown: halt\n")
    report = v.check("ubuntu", text, schema_path=tmp_path / "absent.json")
    assert report.problems == [
        "autoinstall.version: must be the integer 1, not 2 (full schema not available)",
        "autoinstall.shutdown: must be 'reboot' or 'poweroff' (full schema not available)",
        "autoinstall.frobnicate: unknown key (subiquity ignores it in version 1 and rejects it in later versions)",
    ]
    assert report.notes[0].startswith("autoinstall checked against PIM's own rules for the documented keys: "
                                      "subiquity's JSON schema not available (")
    assert report.notes[0].endswith(f"set {v.SCHEMA_ENV} to its path")
    assert v.check("ubuntu", good_user_data(), schema_path=tmp_path / "absent.json").problems == []


def test_schema_path_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text('{"type": "object", "properties": {"version": {"const": 1}, "identity": {}, '
                      '"shutdown": {"enum": ["reboot"]}}, "additionalProperties": false}')
    monkeypatch.setenv(v.SCHEMA_ENV, str(schema))
    report = v.check("ubuntu", good_user_data())
    assert report.notes == [f"autoinstall checked against subiquity's JSON schema ({schema})"]
    assert report.problems and all(p.startswith("autoinstall") for p in report.problems)


def test_preseed_question_set_twice_is_a_warning_with_both_lines() -> None:
    text = ("d-i debian-installer/locale string en_US.UTF-8\n"
            "d-i preseed/late_command string echo one\n"
            "d-i clock-setup/utc boolean true\n"
            "d-i preseed/late_command string echo two\n")
    report = v.check("debian", text)
    assert report.problems == []
    assert report.warnings == ["preseed.cfg: preseed/late_command is set on lines 2, 4; only line 4 counts"]


def test_kickstart_scripts_checked_with_their_interpreter() -> None:
    base = good_kickstart()
    bash_only = base + "%pre --interpreter=/bin/bash\ndisks=(/dev/vd?)\necho ${#disks[@]}\n%end\n"
    assert v.validate("kickstart", bash_only) == []
    python = base + "%post --interpreter=/usr/bin/python3\nimport os\nif True print(os.sep)\n%end\n"
    [problem] = v.validate("kickstart", python)
    line = python.splitlines().index("%post --interpreter=/usr/bin/python3") + 1
    assert problem.startswith(f"ks.cfg: line {line}: %post: python syntax: line 2: ")  # wording is Python's
    other = base + "%post --interpreter=/usr/bin/perl\nprint 1;\n%end\n"
    report = v.check("kickstart", other)
    assert report.problems == [] and any("interpreter /usr/bin/perl not checked" in n for n in report.notes)
