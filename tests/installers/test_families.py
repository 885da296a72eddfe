import re

import pytest
import yaml

from pim.engine.errors import SpecError
from pim.engine.installers import render
from pim.engine.installers.families import (FAMILIES, builtin_template, default_files, progress_label,
                                            template_variables)
from pim.engine.installers.passwords import sha512_crypt
from tests.installers.helpers import (CASES, KEY, MIRRORS, PASSWORD, case_files, case_id, host_debian_mirror,
                                     variables)


def preseed(text: str) -> dict[str, str]:
    """question -> value, continuation lines joined (as debconf reads them)."""
    entries = {}
    for line in text.replace("\\\n", "").splitlines():
        if line.strip() and not line.startswith("#"):
            _owner, question, _type, *value = line.split(None, 3)
            entries[question] = value[0] if value else ""
    return entries


def kickstart(text: str, version: str = "RHEL9"):
    from pykickstart.parser import KickstartParser
    from pykickstart.version import makeVersion

    parser = KickstartParser(makeVersion(version))
    parser.readKickstartFromString(text)
    return parser.handler


def test_every_family_serves_its_answer_file_and_has_its_templates() -> None:
    for name, family in FAMILIES.items():
        assert family.answer_name in family.templates
        for served in family.templates:
            assert builtin_template(name, served)
        for pattern in family.failure_patterns + tuple(p for p, _ in family.progress):
            re.compile(pattern)


def test_defaults_and_derived_values() -> None:
    values = template_variables(variables())
    assert {k: values[k] for k in ("locale", "timezone", "keyboard", "ssh_user", "disk", "firmware", "mirror",
                                    "proxy_url", "serial_console", "ssh_password_hash")} == {
        "locale": "en_US.UTF-8", "timezone": "UTC", "keyboard": "us", "ssh_user": "root", "disk": "/dev/vda",
        "firmware": "bios", "mirror": "", "proxy_url": "", "serial_console": "ttyS0", "ssh_password_hash": None}
    arm = template_variables(variables(arch="aarch64", mirror=None))
    assert (arm["serial_console"], arm["firmware"], arm["mirror"]) == ("ttyAMA0", "uefi", "")


def test_bad_variables_are_all_reported_and_the_password_never_quoted() -> None:
    with pytest.raises(SpecError) as e:
        template_variables({"hostname": "web_1!", "ssh_public_key": KEY + "\nssh-rsa AAAA x", "disk": "vda",
                            "ssh_user": "Admin", "firmware": "efi", "ssh_password": PASSWORD + "\n"})
    assert [p.path for p in e.value.problems] == ["hostname", "ssh_user", "ssh_public_key", "disk", "firmware",
                                                  "ssh_password"]
    assert "'web_1!' is not a host name" in str(e.value)
    assert PASSWORD not in str(e.value)
    with pytest.raises(SpecError) as e:
        template_variables({})
    assert [p.path for p in e.value.problems] == ["hostname", "ssh_public_key"]


def render_case(family: str, case: dict) -> dict[str, str]:
    texts = {name: data.decode() for name, data in case_files(family, case).items()}
    for text in texts.values():  # the secret test: only its hash is ever written
        assert PASSWORD not in text
    return texts


def home(case: dict) -> str:
    return "/root" if case["ssh_user"] == "root" else f"/home/{case['ssh_user']}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_debian_preseed(case: dict) -> None:
    texts = render_case("debian", case)
    assert list(texts) == ["preseed.cfg"]
    q = preseed(texts["preseed.cfg"])
    assert q["debian-installer/add-kernel-opts"] == "console=tty0 console=ttyS0,115200"
    assert q["debian-installer/exit/poweroff"] == "true"
    assert q["pkgsel/include"].split() == ["openssh-server", "qemu-guest-agent", "cloud-init", "sudo"]
    assert q["partman-auto/disk"] == q["grub-installer/bootdev"] == "/dev/vda"
    uefi = case["firmware"] == "uefi"
    assert (q.get("grub-installer/force-efi-extra-removable"), q.get("partman-partitioning/choose_label")) == (
        ("true", "gpt") if uefi else (None, None))
    assert q["mirror/http/proxy"] == case["proxy_url"]
    if case["mirror"]:
        assert (q["mirror/protocol"], q["mirror/http/hostname"], q["mirror/http/directory"]) == (
            "http", "mirror.example", "/debian")
    else:
        assert "mirror/http/hostname" not in q
    late = q["preseed/late_command"]
    assert f"echo '{KEY}' > /target{home(case)}/.ssh/authorized_keys;" in late
    root = case["ssh_user"] == "root"
    assert q["passwd/root-login"] == ("true" if root else "false")
    crypted = q["passwd/root-password-crypted" if root else "passwd/user-password-crypted"]
    if case["ssh_password"]:
        _, _, rounds, salt, _ = crypted.split("$")
        assert crypted == sha512_crypt(PASSWORD, salt, int(rounds.split("=")[1]))
    else:
        assert crypted == "*"
    assert ("/target/etc/sudoers.d/90-pim" in late) is (not root)
    assert ("'admin ALL=(ALL) NOPASSWD:ALL'" in late) is (not root)


def test_debian_mirror_split_with_the_hosts_own_mirror() -> None:
    mirror = host_debian_mirror()
    if mirror is None:
        pytest.skip("no Debian mirror in this host's apt sources")
    q = preseed(default_files("debian", variables(mirror=mirror))["preseed.cfg"].decode())
    scheme, rest = mirror.split("://", 1)
    host, _, path = rest.partition("/")
    assert (q["mirror/protocol"], q[f"mirror/{scheme}/hostname"], q[f"mirror/{scheme}/directory"]) == (
        scheme, host, "/" + path)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_ubuntu_autoinstall(case: dict) -> None:
    texts = render_case("ubuntu", case)
    assert list(texts) == ["user-data", "meta-data", "vendor-data"]
    assert yaml.safe_load(texts["meta-data"]) == {"instance-id": "pim-web1", "local-hostname": "web1"}
    assert yaml.safe_load(texts["vendor-data"]) == {}
    assert texts["user-data"].startswith("#cloud-config\n")
    auto = yaml.safe_load(texts["user-data"])["autoinstall"]
    assert auto["version"] == 1 and auto["shutdown"] == "poweroff"
    assert auto["packages"] == ["qemu-guest-agent", "cloud-init"]
    assert auto["ssh"] == {"install-server": True, "allow-pw": bool(case["ssh_password"])}
    assert auto["storage"]["layout"] == {"name": "direct", "match": {"path": "/dev/vda"}}
    assert auto.get("proxy") == (case["proxy_url"] or None)
    assert auto["apt"].get("primary") == ([{"arches": ["default"], "uri": MIRRORS["ubuntu"]}] if case["mirror"]
                                          else None)
    assert auto["user-data"] == {"disable_root": case["ssh_user"] != "root"}
    [script] = auto["late-commands"]
    assert f"printf '%s\\n' '{KEY}' > /target{home(case)}/.ssh/authorized_keys" in script
    assert "console=tty0 console=ttyS0,115200" in script and "update-grub" in script
    assert "printf '%s\\n' web1 > /target/etc/hostname" in script
    assert ("useradd --create-home --shell /bin/bash --groups sudo admin" in script) is (case["ssh_user"] == "admin")
    assert ("chpasswd -e" in script) is bool(case["ssh_password"])


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_kickstart(case: dict) -> None:
    texts = render_case("kickstart", case)
    handler = kickstart(texts["ks.cfg"])
    from pykickstart.constants import KS_SHUTDOWN

    assert handler.reboot.action == KS_SHUTDOWN  # poweroff, not reboot
    assert handler.bootloader.appendLine == "console=tty0 console=ttyS0,115200"
    assert handler.ignoredisk.onlyuse == ["vda"] and handler.autopart.autopart
    assert set(handler.packages.packageList) == {"openssh-server", "qemu-guest-agent", "cloud-init"}
    assert [g.name for g in handler.packages.groupList] == ["core"]
    assert [(k.username, k.key) for k in handler.sshkey.sshUserList] == [(case["ssh_user"], KEY)]
    if case["mirror"]:
        assert (handler.url.url, handler.url.proxy) == (MIRRORS["kickstart"], case["proxy_url"])
        assert [(r.name, r.baseurl) for r in handler.repo.repoList] == [
            ("AppStream", "http://mirror.example/rocky/9/AppStream/x86_64/os/")]
    else:
        assert handler.method.method == "cdrom"
    if case["ssh_user"] == "root":
        assert handler.rootpw.lock is not bool(case["ssh_password"])
    else:
        [user] = handler.user.userList
        assert (user.name, user.groups, user.lock) == ("admin", ["wheel"], not case["ssh_password"])
        assert "'admin ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/90-pim" in handler.scripts[0].script


def test_aarch64_uses_the_pl011_serial_console() -> None:
    ks = kickstart(default_files("kickstart", variables(arch="aarch64"))["ks.cfg"].decode())
    assert ks.bootloader.appendLine == "console=tty0 console=ttyAMA0,115200"
    q = preseed(default_files("debian", variables(arch="aarch64"))["preseed.cfg"].decode())
    assert q["debian-installer/add-kernel-opts"] == "console=tty0 console=ttyAMA0,115200"
    assert q["grub-installer/force-efi-extra-removable"] == "true"  # arm64 boots UEFI


def test_a_user_template_replaces_the_built_in_one() -> None:
    files = default_files("ubuntu", variables(), templates={"meta-data": "instance-id: {{ hostname }}-custom\n"})
    assert files["meta-data"] == b"instance-id: web1-custom\n"
    assert files["user-data"].startswith(b"#cloud-config")
    with pytest.raises(SpecError) as e:
        default_files("ubuntu", variables(), templates={"meta_data": "x"})
    assert "templates.meta_data: family ubuntu serves no such file" in str(e.value)
    with pytest.raises(SpecError):
        default_files("suse", variables())


@pytest.mark.parametrize("family,expected", [
    ("debian", "auto=true priority=critical url=http://10.0.2.2:8000/t/preseed.cfg interface=auto "
               "netcfg/hostname=web1 console=ttyS0,115200"),
    ("ubuntu", "autoinstall ds=nocloud;s=http://10.0.2.2:8000/t/ console=ttyS0,115200"),
    ("kickstart", "inst.stage2=hd:LABEL=Rocky-9-4-x86_64-dvd inst.ks=http://10.0.2.2:8000/t/ks.cfg inst.text "
                  "console=ttyS0,115200"),
])
def test_boot_params(family: str, expected: str) -> None:
    fam = FAMILIES[family]
    values = {**template_variables(variables()), "http_url": "http://10.0.2.2:8000/t/",
              "answer_url": f"http://10.0.2.2:8000/t/{fam.answer_name}", "volume_id": "Rocky-9-4-x86_64-dvd"}
    assert render(fam.boot_params, values, "params") == expected


@pytest.mark.parametrize("family,line,failed", [
    ("debian", "[!!] Install the base system   Installation step failed", True),
    ("debian", "Failed to retrieve the preconfiguration file", True),
    ("debian", "  Bad archive mirror  ", True),
    ("debian", "Loading additional components", False),
    ("ubuntu", "subiquity/Install/install: Traceback (most recent call last):", True),
    ("ubuntu", "An error occurred during installation", True),
    ("ubuntu", "finish: subiquity/Late/run: SUCCESS: late-commands", False),
    ("kickstart", "Traceback (most recent call last):", True),
    ("kickstart", "Pane is dead", True),
    ("kickstart", "There was an error running the kickstart script at line 40.", True),
    ("kickstart", "Installing qemu-guest-agent (212/340)", False),
])
def test_failure_patterns(family: str, line: str, failed: bool) -> None:
    assert any(re.search(p, line) for p in FAMILIES[family].failure_patterns) is failed


@pytest.mark.parametrize("family,line,label", [
    ("debian", "Installing the base system", "base system"),
    ("debian", "Install the GRUB boot loader", "boot loader"),
    ("ubuntu", "start: subiquity/Install/install/curtin_install: curtin command curthooks", "configuring"),
    ("ubuntu", "start: subiquity/Late/run: late-commands", "late commands"),
    ("kickstart", "Installing cloud-init (201/340)", "packages"),
    ("kickstart", "Installing boot loader", "boot loader"),
    ("kickstart", "some other line", None),
])
def test_progress_labels(family: str, line: str, label: str | None) -> None:
    assert progress_label(family, line) == label


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_password_is_written_only_as_its_hash(family: str) -> None:
    for user in ("root", "admin"):
        files = default_files(family, variables(ssh_user=user, ssh_password=PASSWORD))
        text = b"".join(files.values()).decode()
        assert PASSWORD not in text
        [hashed] = set(re.findall(r"\$6\$rounds=\d+\$[./0-9A-Za-z]+\$[./0-9A-Za-z]{86}", text))
        _, _, rounds, salt, _ = hashed.split("$")
        assert hashed == sha512_crypt(PASSWORD, salt, int(rounds.split("=")[1]))
