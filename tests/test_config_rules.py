"""Each rule in pim.yaml against the rule of the system it describes, at its edges.

A value just inside each edge is accepted and one just outside is refused with a
message that quotes it. The sources of the rules are cited next to them in
pim/engine/config/spec.py, pim/engine/config/units.py and pim/engine/deploy/spec.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from pim.engine.config.spec import FileStep, load_config, load_yaml
from pim.engine.config.units import parse_duration, parse_size
from pim.engine.deploy.aws.common import ami_name
from pim.engine.deploy.model import BuiltImage
from pim.engine.deploy.proxmox.params import key_tag, vm_name
from pim.engine.deploy.spec import AwsTarget, ProxmoxTarget
from pim.engine.errors import SpecError
from tests.helpers import MINIMAL_FILES, minimal_image, write_config

PVE = {"type": "proxmox", "api_url": "https://pve:8006", "node": "pve", "storage": "local-lvm",
       "token_id": "pim@pve!deploy"}
AWS = {"type": "aws", "region": "us-east-1"}


def _error(model: type, data: dict[str, Any]) -> str | None:
    """None if the model accepts data, else the text of its errors."""
    try:
        model.model_validate(data)
    except ValidationError as e:
        return str(e)
    return None


def _check(model: type, base: dict[str, Any], field: str, value: Any, ok: bool) -> None:
    error = _error(model, {**base, field: value})
    if ok:
        assert error is None, error
    else:
        assert error is not None, f"{field}={value!r} was accepted"


# --- Proxmox VE: pve-common JSONSchema.pm and the kernel's interface names ---------------

@pytest.mark.parametrize("value, ok", [
    ("pve", True), ("a", True), ("9", True), ("pve-1", True), ("1node", True), ("A" * 63, True),
    ("pve.example.com", False), ("pve.", False), ("-pve", False), ("pve-", False), ("pve_1", False), ("", False),
])
def test_pve_node_names(value: str, ok: bool) -> None:
    _check(ProxmoxTarget, PVE, "node", value, ok)


@pytest.mark.parametrize("value, ok", [
    ("ab", True), ("local-lvm", True), ("a.b_c-1", True), ("Z9", True),
    ("a", False), ("1abc", False), ("local-", False), ("local.", False), ("loc:al", False), ("_x", False),
])
@pytest.mark.parametrize("field", ["storage", "upload_storage"])
def test_pve_storage_ids(field: str, value: str, ok: bool) -> None:
    _check(ProxmoxTarget, PVE, field, value, ok)


@pytest.mark.parametrize("value, ok", [
    ("vmbr0", True), ("1br", True), ("_br", True), ("b" * 15, True), ("vmbr0.100", True), (".x", True),
    ("...", True),
    ("b" * 16, False), (".", False), ("..", False), ("vm br", False), ("br/0", False), ("br:0", False), ("", False),
])
def test_pve_bridge_names(value: str, ok: bool) -> None:
    _check(ProxmoxTarget, PVE, "bridge", value, ok)


@pytest.mark.parametrize("value, ok", [
    ("pim@pve!deploy", True), ("root@pam!ab", True), ("a@pve!t1", True), ("first.last@corp@ldap!ci", True),
    ("u" * 60 + "@pve!ab", True),  # user id of 64 characters
    ("u" * 61 + "@pve!ab", False), ("pim@pve!d", False), ("pim@p!deploy", False), ("pim@pve!1abc", False),
    ("pim pve@pve!ab", False), ("a:b@pve!ab", False), ("a/b@pve!ab", False), ("pim@pve", False),
    ("pim!deploy", False), ("pim@" + "r" * 33 + "!ab", False),
])
def test_pve_token_ids(value: str, ok: bool) -> None:
    _check(ProxmoxTarget, PVE, "token_id", value, ok)


def test_a_bad_token_id_is_quoted_with_the_rule() -> None:
    error = _error(ProxmoxTarget, {**PVE, "token_id": "pim@pve!d"})
    assert "'pim@pve!d'" in error and "user@realm!token" in error and "pim@pve!deploy" in error


@pytest.mark.parametrize("field, value, ok", [
    ("vmid_min", 100, True), ("vmid_min", 99, False), ("vmid_min", 999_999_999, True),
    ("vmid_min", 1_000_000_000, False),
    ("memory_mb", 16, True), ("memory_mb", 15, False), ("memory_mb", 4_194_304, True), ("memory_mb", 4_194_305, False),
    ("cores", 1, True), ("cores", 0, False), ("cores", 1024, True),
    ("timeout", "1s", True), ("timeout", 0, False), ("task_timeout", "30m", True), ("task_timeout", "-1", False),
])
def test_pve_numbers(field: str, value: Any, ok: bool) -> None:
    _check(ProxmoxTarget, PVE, field, value, ok)


@pytest.mark.parametrize("value, ok", [
    ("https://pve:8006", True), ("https://pve:1", True), ("https://pve:65535", True), ("https://pve/", True),
    ("https://[fd00::1]:8006", True), ("https://10.0.0.2", True),
    ("https://pve:65536", False), ("https://pve:0", False), ("https://pve:x", False), ("http://pve:8006", False),
    ("https://pve:8006/api2/json", False), ("https://user@pve:8006", False), ("https://", False),
])
def test_pve_api_urls(value: str, ok: bool) -> None:
    _check(ProxmoxTarget, PVE, "api_url", value, ok)


# pve-tag (pve-common JSONSchema.pm $PVE_TAG_RE) and dns-name (pve_verify_dns_name, the
# format of a VM's name): what PIM writes must pass them for every image name it accepts.
PVE_TAG = re.compile(r"[a-z0-9_][a-z0-9_\-+.]*", re.IGNORECASE)
PVE_DNS_NAME = re.compile(r"(([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?)\.)*([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?)")
AMI_NAME = re.compile(r"[a-zA-Z0-9()\[\] ./\-'@_]{3,128}")  # EC2 RegisterImage: Name


@pytest.mark.parametrize("name", ["a", "web", "a.", "a..b", "a_b", "a-", "0", "x" * 63])
def test_names_pim_writes_pass_pve_and_ec2_rules(name: str) -> None:
    image = BuiltImage(name, "f" * 64, Path("/x"), "e" * 64, 1, 1 << 30, "x86_64", "bios", {})
    assert PVE_TAG.fullmatch("pim") and PVE_TAG.fullmatch(key_tag(image.key))
    assert PVE_DNS_NAME.fullmatch(vm_name(image)), vm_name(image)
    assert AMI_NAME.fullmatch(ami_name(image)), ami_name(image)


# --- AWS: botocore's partitions, S3's bucket rules, EC2's tag rules, EBS volume types ----

@pytest.mark.parametrize("value, ok", [
    ("us-east-1", True), ("eu-west-3", True), ("ap-southeast-7", True), ("mx-central-1", True),
    ("us-gov-west-1", True), ("cn-north-1", True), ("eusc-de-east-1", True), ("us-isob-east-1", True),
    ("eu-isoe-west-1", True),
    ("us-east", False), ("US-EAST-1", False), ("zz-east-1", False), ("useast1", False), ("us-east-1a", False),
    ("", False),
])
def test_aws_regions(value: str, ok: bool) -> None:
    _check(AwsTarget, AWS, "region", value, ok)
    _check(AwsTarget, AWS, "copy_to", [value], ok and value != AWS["region"])


def test_a_bad_region_is_quoted_with_an_example() -> None:
    error = _error(AwsTarget, {**AWS, "region": "us-east"})
    assert "'us-east'" in error and "us-east-1" in error


@pytest.mark.parametrize("value, ok", [
    ("abc", True), ("a" * 63, True), ("my.bucket-1", True), ("1.2.3", True), ("0abc9", True),
    ("ab", False), ("a" * 64, False), ("My-bucket", False), ("-abc", False), ("abc-", False), ("a..b", False),
    ("a_b", False), ("192.168.5.4", False), ("xn--abc", False), ("sthree-abc", False), ("amzn-s3-demo-x", False),
    ("abc-s3alias", False), ("abc--ol-s3", False), ("abc.mrap", False), ("abc--x-s3", False),
    ("abc--table-s3", False),
])
def test_s3_bucket_names(value: str, ok: bool) -> None:
    _check(AwsTarget, AWS, "s3_bucket", value, ok)


@pytest.mark.parametrize("tags, ok", [
    ({"k" * 128: "v"}, True), ({"k" * 129: "v"}, False), ({"": "v"}, False),
    ({"team": "v" * 256}, True), ({"team": "v" * 257}, False), ({"team": ""}, True),
    ({"awsome": "x"}, True), ({"aws:team": "x"}, False), ({"AwS:team": "x"}, False),
    ({"pim:key": "x"}, False), ({"Kostenstelle ü#1": "ça va?"}, True),
    ({f"t{i}": "x" for i in range(38)}, True), ({f"t{i}": "x" for i in range(39)}, False),
])
def test_aws_tags(tags: dict[str, str], ok: bool) -> None:
    _check(AwsTarget, AWS, "tags", tags, ok)


@pytest.mark.parametrize("value, ok", [("gp3", True), ("gp2", True), ("standard", True),
                                       ("io1", False), ("io2", False), ("st1", False), ("sc1", False),
                                       ("gp4", False)])
def test_ebs_root_volume_types(value: str, ok: bool) -> None:
    _check(AwsTarget, AWS, "volume_type", value, ok)


def test_an_unusable_volume_type_says_why() -> None:
    assert "boot volume" in _error(AwsTarget, {**AWS, "volume_type": "st1"})
    assert "IOPS" in _error(AwsTarget, {**AWS, "volume_type": "io2"})


# --- sizes and durations (QEMU's size units) ----------------------------------------------

@pytest.mark.parametrize("value, expected", [
    ("4G", 4 << 30), ("4g", 4 << 30), ("4GiB", 4 << 30), ("4 GiB", 4 << 30), ("4gib", 4 << 30),
    ("1.5G", 3 << 29), ("512M", 512 << 20), ("2T", 2 << 40), ("1024", 1024), ("1024B", 1024), ("0.5K", 512),
    (0, 0), (1 << 40, 1 << 40),
])
def test_sizes_accepted(value: Any, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize("value, says", [
    ("4GB", "4G' or '4GiB"), ("4gb", "ambiguous"), ("512MB", "ambiguous"), ("4Gi", "not a size"),
    ("0.3K", "whole number of bytes"), ("1.5", "whole number of bytes"), ("-1", "not a size"), (-1, "negative"),
    ("4ib", "not a size"), ("4 bananas", "not a size"), ("", "not a size"), (True, "not a size"), (4.0, "not a size"),
])
def test_sizes_refused(value: Any, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)) as e:
        parse_size(value)
    assert repr(value) in str(e.value)


@pytest.mark.parametrize("value, expected", [
    ("90s", 90), ("30m", 1800), ("1.5h", 5400), ("1m30s", 90), ("1h30m", 5400), ("2h0m1s", 7201),
    ("45", 45), (0, 0), ("0", 0), (2.5, 2.5), ("30M", 1800),
])
def test_durations_accepted(value: Any, expected: float) -> None:
    assert parse_duration(value) == expected


@pytest.mark.parametrize("value", ["-1", -1, float("inf"), float("nan"), "1:30", "30 min", "1m1m", "m", "", True,
                                   "1d"])
def test_durations_refused(value: Any) -> None:
    with pytest.raises(ValueError, match="not a duration") as e:
        parse_duration(value)
    assert repr(value) in str(e.value)


# --- the image spec ---------------------------------------------------------------------

def _image_problems(tmp_path: Path, **overrides: Any) -> dict[str, str]:
    try:
        load_config(write_config(tmp_path, {"web": minimal_image(**overrides)}, MINIMAL_FILES))
    except SpecError as e:
        return {p.path: p.message for p in e.problems}
    return {}


@pytest.mark.parametrize("field, value, ok", [
    ("disk_size", "1G", True), ("disk_size", (1 << 30) - 1, False),
    ("memory", "256M", True), ("memory", "255M", False), ("memory", "300.5M", False), ("memory", "2GiB", True),
])
def test_image_sizes(tmp_path: Path, field: str, value: Any, ok: bool) -> None:
    problems = _image_problems(tmp_path, **{field: value})
    assert (f"images.web.{field}" not in problems) == ok, problems


def test_memory_not_in_whole_mib_names_the_fix(tmp_path: Path) -> None:
    assert "'300M'" in _image_problems(tmp_path, memory="300.5M")["images.web.memory"]


FILE_STEP = {"type": "file", "source": __file__, "destination": "/x"}


@pytest.mark.parametrize("value, expected", [
    ("0644", "0644"), ("644", "0644"), (600, "0600"), (644, "0644"), ("7", "0007"), ("07777", "7777"),
    ("000644", "0644"), (0, "0000"),
])
def test_file_modes_as_chmod_reads_them(value: Any, expected: str) -> None:
    step = FileStep.model_validate({**FILE_STEP, "mode": value})
    assert step.mode == expected


@pytest.mark.parametrize("value", ["10000", "0800", "8", "0o644", "u+x", "", "-644", 384, True, 6.44])
def test_file_modes_refused(value: Any) -> None:
    error = _error(FileStep, {**FILE_STEP, "mode": value})
    assert error is not None and "file mode" in error and repr(value) in error


def test_a_yaml_octal_mode_gets_a_hint() -> None:
    assert "0o600" in _error(FileStep, {**FILE_STEP, "mode": 0o600})


@pytest.mark.parametrize("name, ok", [("answer", True), ("a.b", True), (".hidden", True), ("...", True),
                                      ("user-data", True), (".", False), ("..", False), ("a/b", False),
                                      ("", False), ("a b", False)])
def test_served_file_names(tmp_path: Path, name: str, ok: bool) -> None:
    installer = {**minimal_image()["installer"], "answer_name": name}
    assert ("images.web.installer.answer_name" not in _image_problems(tmp_path, installer=installer)) == ok
    installer = {**minimal_image()["installer"], "files": {name: "answer.txt"}}
    assert ("images.web.installer.files" not in _image_problems(tmp_path, installer=installer)) == ok


@pytest.mark.parametrize("field, value, ok", [("timeout", 0, False), ("timeout", "1s", True),
                                              ("timeout", "-5", False)])
def test_ssh_timeout_is_positive(tmp_path: Path, field: str, value: Any, ok: bool) -> None:
    assert ("images.web.ssh.timeout" not in _image_problems(tmp_path, ssh={field: value})) == ok


@pytest.mark.parametrize("value, ok", [("ab" * 32, True), ("AB" * 32, True), ("a" * 63, False), ("g" * 64, False)])
def test_source_sha256(tmp_path: Path, value: str, ok: bool) -> None:
    problems = _image_problems(tmp_path, source={"iso": "installer.iso", "sha256": value})
    assert ("images.web.source.sha256" not in problems) == ok


# --- how pim.yaml is read: YAML 1.2's core schema, unique keys --------------------------

@pytest.mark.parametrize("text, expected", [
    ("v: no", "no"), ("v: on", "on"), ("v: Off", "Off"), ("v: y", "y"), ("v: true", True), ("v: FALSE", False),
    ("v: 0600", 600), ("v: 0o600", 0o600), ("v: 0x1F", 31), ("v: 1:30", "1:30"), ("v: 1_000", "1_000"),
    ("v: 1e3", 1000.0), ("v: .5", 0.5), ("v: ~", None), ("v:", None), ("v: '0600'", "0600"),
])
def test_yaml_scalars_follow_the_yaml_1_2_core_schema(text: str, expected: Any) -> None:
    assert load_yaml(text) == {"v": expected}


def _load_text(tmp_path: Path, text: str) -> Any:
    for name, content in MINIMAL_FILES.items():
        (tmp_path / name).write_text(content)
    (tmp_path / "pim.yaml").write_text(text)
    return load_config(tmp_path / "pim.yaml")


IMAGE_YAML = """\
images:
  web:
    source: {iso: installer.iso}
    installer:
      template: answer.txt
      keyboard: no
      boot: {kernel: /k, initrd: /i}
    finalize: {cloud_init: no, trim: off}
    snapshot: yes
    provision:
      - {type: file, source: answer.txt, destination: /etc/a, mode: 0600}
      - {type: file, source: answer.txt, destination: /etc/b, mode: 755}
"""


def test_yaml_1_1_words_mean_what_the_field_needs(tmp_path: Path) -> None:
    spec = _load_text(tmp_path, IMAGE_YAML).image("web")
    assert spec.installer.keyboard == "no"  # Norway's layout, not False
    assert spec.finalize.cloud_init is False and spec.finalize.trim is False and spec.snapshot is True
    assert [s.mode for s in spec.provision] == ["0600", "0755"]


def test_duplicate_keys_are_an_error_naming_both_lines(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as e:
        _load_text(tmp_path, IMAGE_YAML.replace("    snapshot: yes\n", "    snapshot: yes\n    snapshot: no\n"))
    [problem] = e.value.problems
    assert problem.path == "line 10, column 5"
    assert "duplicate key 'snapshot' (first at line 9)" in problem.message


def test_a_number_where_text_is_expected_says_to_quote_it(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as e:
        _load_text(tmp_path, IMAGE_YAML + "    env: {PORT: 8080, VERSION: 1.10}\n")
    problems = {p.path: p.message for p in e.value.problems}
    assert "'8080'" in problems["images.web.env.PORT"] and "quotes" in problems["images.web.env.PORT"]
    assert "1.1 is a float" in problems["images.web.env.VERSION"]


def test_a_sexagesimal_duration_is_refused_not_read_as_seconds(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=re.escape("'1:30' is not a duration")):
        _load_text(tmp_path, IMAGE_YAML + "    ssh: {timeout: 1:30}\n")


@pytest.mark.parametrize("arch, cpus, ok", [("x86_64", 1, True), ("x86_64", 0, False), ("x86_64", 1024, True),
                                            ("x86_64", 1025, False), ("aarch64", 512, True), ("aarch64", 513, False)])
def test_cpus_the_qemu_machine_takes(tmp_path: Path, arch: str, cpus: int, ok: bool) -> None:
    problems = _image_problems(tmp_path, arch=arch, cpus=cpus)
    assert not problems if ok else problems, problems
    if not ok and cpus:
        assert f"cpus {cpus}" in problems["images.web"]


@pytest.mark.parametrize("prefix, ok", [("", True), ("p" * 940, True), ("é" * 470, True), ("p" * 941, False),
                                        ("é" * 471, False)])
def test_s3_prefix_leaves_room_in_a_1024_byte_key(prefix: str, ok: bool) -> None:
    _check(AwsTarget, AWS, "s3_prefix", prefix, ok)


@pytest.mark.parametrize("port, ok", [(1, True), (65535, True), (0, False), (65536, False)])
def test_pve_ssh_port(port: int, ok: bool) -> None:
    _check(ProxmoxTarget, PVE, "ssh", {"port": port}, ok)
