"""`pim validate` renders what the build renders (answer templates, template files,
boot parameters, boot command) with the build's variables; user files are rendered
only when marked as templates; a build that could never log in is refused."""

import subprocess
import sys
from pathlib import Path

import pytest

from pim.engine.config.spec import load_config
from pim.engine.errors import SpecError
from pim.engine.installers.prepare import build_variables, check_answers, prepare
from tests.helpers import write_config
from tests.installers.helpers import KEY

URL_ISO = {"iso": "http://iso.example/installer.iso", "sha256": "0" * 64}  # fetched by a build only
ANSWER = "hostname={{ hostname }}\nssh_authorized_key={{ ssh_public_key }}\n"
CUSTOM_BOOT = {"kernel": "/install.amd/vmlinuz", "initrd": "/install.amd/initrd.gz",
               "params": "console=ttyS0 url={{ answer_url }}"}


def _config(tmp_path: Path, installer: dict, files: dict[str, str], **image) -> Path:
    return write_config(tmp_path, {"web": {"source": URL_ISO, "installer": installer, **image}}, files)


def _problems(tmp_path: Path, installer: dict, files: dict[str, str], **image) -> list[str]:
    return [str(p) for p in check_answers(load_config(_config(tmp_path, installer, files, **image)), "web")]


def _custom(**installer) -> dict:
    return {"family": "custom", "template": "answer.txt", "boot": CUSTOM_BOOT, **installer}


# --- 1. validate renders everything the build renders -----------------------------

def test_misspelt_variable_in_a_custom_template_names_file_line_and_variable(tmp_path: Path) -> None:
    problems = _problems(tmp_path, _custom(), {"answer.txt": "hostname={{ hostname }}\nkey={{ ssh_publc_key }}\n"})
    assert len(problems) == 1
    assert problems[0].startswith("images.web.installer.template: answer.txt: line 2: 'ssh_publc_key' is undefined "
                                  "(did you mean 'ssh_public_key'?); available variables: ")


def test_misspelt_variable_on_a_branch_not_taken_is_found(tmp_path: Path) -> None:
    template = ANSWER + "{% if ssh_password %}\npw={{ ssh_pasword }}\n{% endif %}\n"
    [problem] = _problems(tmp_path, _custom(), {"answer.txt": template})
    assert "answer.txt: line 4: 'ssh_pasword' is undefined (did you mean 'ssh_password'?)" in problem


def test_optional_variables_with_default_or_is_defined_are_accepted(tmp_path: Path) -> None:
    template = ANSWER + "{{ extra | default('') }}\n{% if more is defined %}{{ more }}{% endif %}\n"
    assert _problems(tmp_path, _custom(), {"answer.txt": template}) == []


def test_misspelt_variable_in_boot_params(tmp_path: Path) -> None:
    boot = {**CUSTOM_BOOT, "params": "console=ttyS0 url={{ answer_ur }}"}
    [problem] = _problems(tmp_path, _custom(boot=boot), {"answer.txt": ANSWER})
    assert problem.startswith("images.web.installer.boot.params: installer.boot.params: line 1: 'answer_ur' is "
                              "undefined (did you mean 'answer_url'?)")


def test_template_syntax_errors_in_template_and_boot_params_are_both_reported(tmp_path: Path) -> None:
    boot = {**CUSTOM_BOOT, "params": "console=ttyS0 url={{ answer_url }"}
    problems = _problems(tmp_path, _custom(boot=boot), {"answer.txt": "a=1\nhostname={{ hostname }\n"})
    assert problems == [
        "images.web.installer.template: answer.txt: line 2: template syntax error: unexpected '}'; this file is "
        "rendered as a Jinja2 template; to keep text such as '{{', '{%' or '{#' literally, put it between "
        "{% raw %} and {% endraw %}; or serve the file unrendered: installer.answer_file instead of "
        "installer.template, installer.files instead of installer.template_files",
        "images.web.installer.boot.params: installer.boot.params: line 1: template syntax error: unexpected '}'; "
        "this file is rendered as a Jinja2 template; to keep text such as '{{', '{%' or '{#' literally, put it "
        "between {% raw %} and {% endraw %}",
    ]


def test_boot_command_is_rendered_and_its_tokens_checked(tmp_path: Path) -> None:
    boot = {"command": ["<wait5><esc><f6> url={{ answer_url }}<enter>", "<leftCtrlOn>x<leftCtrlOff>",
                        "auto<wrong>", "{{ answer_ur }}"]}
    problems = _problems(tmp_path, _custom(boot=boot), {"answer.txt": ANSWER})
    assert len(problems) == 2
    assert problems[0].startswith("images.web.installer.boot.command[2]: installer.boot.command[2]: column 5: "
                                  "unknown token '<wrong>'; known: <enter> <return> <esc>")
    assert "<wait1m30s>" in problems[0] and "<pageUp>" in problems[0]
    assert problems[1].startswith("images.web.installer.boot.command[3]: installer.boot.command[3]: line 1: "
                                  "'answer_ur' is undefined")


def test_boot_command_renders_with_the_builds_variables(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, _custom(boot={"command": ["<wait>url={{ answer_url }}<enter>"]}),
                              {"answer.txt": ANSWER}))
    spec = cfg.image("web")
    variables = build_variables(spec, "web", hostname="web", ssh_public_key=KEY, http_url="http://10.0.2.2:9/t/",
                                answer_url="http://10.0.2.2:9/t/answer", proxy_url="", log_host="10.0.2.2",
                                log_port=9)
    prepared = prepare(cfg, spec, None, variables)
    assert prepared.command == ["<wait>url=http://10.0.2.2:9/t/answer<enter>"]
    assert prepared.params is None  # typed boot: no kernel command line


def test_built_in_family_template_files_and_boot_params_render_with_log_parameters(tmp_path: Path) -> None:
    installer = {"family": "debian", "template_files": {"late.sh": "late.sh"}}
    cfg = load_config(_config(tmp_path, installer, {"late.sh": "echo {{ hostnme }}\n"}))
    [problem] = [str(p) for p in check_answers(cfg, "web")]
    assert problem.startswith("images.web.installer.template_files.late.sh: late.sh: line 1: 'hostnme' is undefined")
    (tmp_path / "late.sh").write_text("echo {{ hostname }}\n")
    spec = cfg.image("web")
    variables = build_variables(spec, "web", hostname="web", ssh_public_key=KEY, http_url="http://10.0.2.2:9/t/",
                                answer_url="http://10.0.2.2:9/t/preseed.cfg", proxy_url="", log_host="10.0.2.2",
                                log_port=5514)
    prepared = prepare(cfg, spec, None, variables)
    assert prepared.files["late.sh"] == b"echo web\n"
    assert prepared.params is not None
    assert "url=http://10.0.2.2:9/t/preseed.cfg" in prepared.params
    assert prepared.params.endswith(" log_host=10.0.2.2 log_port=5514")


def test_pim_validate_exits_2_naming_file_line_and_variable(tmp_path: Path) -> None:
    cfg = _config(tmp_path, _custom(boot={**CUSTOM_BOOT, "params": "url={{ answer_ur }}"}),
                  {"answer.txt": "ssh_authorized_key={{ ssh_publc_key }}\n"}, ssh={"password": "pw-for-this-test"})
    out = subprocess.run([sys.executable, "-m", "pim.cli.main", "validate", "-c", str(cfg)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "2 problem(s)" in out.stderr
    assert "answer.txt: line 1: 'ssh_publc_key' is undefined" in out.stderr
    assert "installer.boot.params: line 1: 'answer_ur' is undefined" in out.stderr


# --- 2. user files are never silently changed -------------------------------------

KICKSTART = """\
text --non-interactive
lang en_US.UTF-8
keyboard us
timezone UTC --utc
rootpw --lock
sshkey --username=root "{key}"
zerombr
clearpart --all --initlabel
autopart
reboot

%pre --interpreter=/bin/bash
disks=(/dev/vd?)
echo "${{#disks[@]}} disks" > /tmp/disks
%end

%post
docker ps --format '{{{{.Name}}}}'
%end
"""


def test_kickstart_pre_with_bash_array_length_says_template_and_how_to_keep_it(tmp_path: Path) -> None:
    text = KICKSTART.format(key="{{ ssh_public_key }}").replace("{{.Name}}", "name")
    [problem] = _problems(tmp_path, {"family": "kickstart", "template": "ks.cfg"}, {"ks.cfg": text})
    assert problem.startswith("images.web.installer.template: ks.cfg: line 14: '${#' (a shell array or string "
                              "length) opens a Jinja2 comment here, which would drop the text up to the next '#}'; "
                              "this file is rendered as a Jinja2 template;")
    assert "{% raw %}" in problem and "installer.answer_file" in problem


def test_kickstart_post_with_go_template_says_template_and_how_to_keep_it(tmp_path: Path) -> None:
    text = KICKSTART.format(key="{{ ssh_public_key }}").replace("${#disks[@]}", "2")
    [problem] = _problems(tmp_path, {"family": "kickstart", "template": "ks.cfg"}, {"ks.cfg": text})
    assert problem.startswith("images.web.installer.template: ks.cfg: line 18: template syntax error: "
                              "unexpected '.'; this file is rendered as a Jinja2 template;")
    assert "{% raw %}" in problem


def test_a_comment_that_would_swallow_text_is_an_error_even_when_closed(tmp_path: Path) -> None:
    text = ANSWER + "n=${#disks[@]}\nkept line\necho '#}'\n"
    [problem] = _problems(tmp_path, _custom(), {"answer.txt": text})
    assert "answer.txt: line 3: '${#'" in problem


def test_raw_keeps_the_text_literally(tmp_path: Path) -> None:
    body = "{% raw %}n=${#disks[@]} {{.Name}}{% endraw %}\n"
    cfg = load_config(_config(tmp_path, _custom(), {"answer.txt": ANSWER + body}))
    prepared = prepare(cfg, cfg.image("web"), None, _variables(cfg))
    assert prepared.files["answer"].decode().endswith("n=${#disks[@]} {{.Name}}\n")


def test_answer_file_and_files_are_served_byte_for_byte(tmp_path: Path) -> None:
    text = KICKSTART.format(key=KEY)
    installer = {"family": "kickstart", "answer_file": "ks.cfg", "files": {"notes.txt": "notes.txt"}}
    # A file served as it is cannot carry the per-build key: the answer file's password logs in.
    cfg_path = _config(tmp_path, installer, {"ks.cfg": text, "notes.txt": "{{ not rendered }} ${#x}\n"},
                       ssh={"password": "pw-from-the-kickstart"})
    cfg = load_config(cfg_path)
    assert check_answers(cfg, "web") == [] or pytest.fail(str(check_answers(cfg, "web")))
    prepared = prepare(cfg, cfg.image("web"), None, _variables(cfg, KEY))
    assert prepared.files["ks.cfg"] == text.encode()
    assert Path(prepared.files["notes.txt"]).read_bytes() == b"{{ not rendered }} ${#x}\n"


def test_template_and_answer_file_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="give template \\(rendered\\) or answer_file"):
        load_config(_config(tmp_path, {"family": "debian", "template": "a", "answer_file": "a"}, {"a": "x"}))


# --- 4. a build that can never log in fails before QEMU starts ----------------------

PRESEED = """\
d-i debian-installer/locale string en_US.UTF-8
d-i passwd/root-login boolean true
d-i preseed/late_command string in-target sh -c 'mkdir -p /root/.ssh; echo "{{ ssh_public_key }}" >> /root/.ssh/authorized_keys'
d-i pkgsel/include string openssh-server
d-i preseed/late_command string in-target apt-get clean
"""


def test_preseed_late_command_set_twice_drops_the_key(tmp_path: Path) -> None:
    problems = _problems(tmp_path, {"family": "debian", "template": "preseed.cfg"}, {"preseed.cfg": PRESEED})
    assert problems[-1] == (
        "images.web.installer: no served file authorizes the build key and ssh.password is unset, so the build "
        "could never log in (preseed.cfg line 3 authorizes it in preseed/late_command, but line 5 sets "
        "preseed/late_command again and only the last counts): write {{ ssh_public_key }} into the build user's "
        "authorized_keys from the answer template (as the built-in templates do), or set ssh.password to the "
        "password the answer file gives user 'root'")


def test_pim_validate_warns_about_the_question_set_twice(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, {"family": "debian", "template": "preseed.cfg"}, {"preseed.cfg": PRESEED},
                              ssh={"password": "pw-set-by-preseed"}))
    notes: list[str] = []
    assert check_answers(cfg, "web", notes) == []
    assert ("warning: images.web: preseed.cfg: preseed/late_command is set on lines 3, 5; only line 5 counts"
            in notes)


def test_the_build_refuses_it_before_any_vm(tmp_path: Path) -> None:
    # prepare() is what the install stage calls before QEMU starts.
    cfg = load_config(_config(tmp_path, {"family": "debian", "template": "preseed.cfg"}, {"preseed.cfg": PRESEED}))
    with pytest.raises(SpecError, match="could never log in"):
        prepare(cfg, cfg.image("web"), None, _variables(cfg))


def test_key_in_the_last_setting_or_a_password_is_enough(tmp_path: Path) -> None:
    fixed = "\n".join(PRESEED.splitlines()[:-1]) + "\n"
    login = [p for p in _problems(tmp_path, {"family": "debian", "template": "preseed.cfg"},
                                  {"preseed.cfg": fixed}) if "log in" in p]
    assert login == []
    login = [p for p in _problems(tmp_path / "pw", {"family": "debian", "template": "preseed.cfg"},
                                  {"preseed.cfg": PRESEED}, ssh={"password": "pw-set-by-preseed"}) if "log in" in p]
    assert login == []


def test_a_key_only_in_a_comment_does_not_count(tmp_path: Path) -> None:
    template = "hostname={{ hostname }}\n# ssh_authorized_key={{ ssh_public_key }}\n"
    [problem] = _problems(tmp_path, _custom(), {"answer.txt": template})
    assert "could never log in:" in problem


def _variables(cfg, key: str = KEY) -> dict:
    spec = cfg.image("web")
    return build_variables(spec, "web", hostname="web", ssh_public_key=key, http_url="http://10.0.2.2:9/t/",
                           answer_url="http://10.0.2.2:9/t/answer", proxy_url="", log_host="10.0.2.2", log_port=9)
