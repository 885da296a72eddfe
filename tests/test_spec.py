from pathlib import Path

import pytest

from pim.engine.errors import SpecError
from pim.engine.config.spec import json_schema, load_config
from pim.engine.config.units import parse_duration, parse_size
from tests.helpers import MINIMAL_FILES, minimal_image, write_config


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, {"web": minimal_image()}, MINIMAL_FILES))
    spec = cfg.image("web")
    assert spec.disk_size == 8 << 30
    assert spec.memory == 2 << 30
    assert spec.firmware.value == "bios" and spec.accel.value == "auto"
    assert spec.ssh.user == "root"
    assert cfg.path("answer.txt") == (tmp_path / "answer.txt").resolve()


def test_every_problem_is_reported_with_its_path(tmp_path: Path) -> None:
    image = minimal_image(disk_size="lots", colour="blue")
    image["provision"] = [{"type": "shell", "env": {"A": "1"}}]
    with pytest.raises(SpecError) as e:
        load_config(write_config(tmp_path, {"web": image}, MINIMAL_FILES))
    paths = {p.path: p.message for p in e.value.problems}
    assert paths.keys() == {"images.web.disk_size", "images.web.colour", "images.web.provision.0"}
    assert "'lots'" in paths["images.web.disk_size"]
    assert "unknown key" in paths["images.web.colour"]
    assert "exactly one of inline or script" in paths["images.web.provision.0"]


def test_missing_files_and_bad_names(tmp_path: Path) -> None:
    image = minimal_image(iso="nope.iso")
    image["provision"] = [{"type": "file", "source": "missing.txt", "destination": "etc/motd"}]
    with pytest.raises(SpecError) as e:
        load_config(write_config(tmp_path, {"Web Server": image}, {"answer.txt": "x"}))
    text = str(e.value)
    assert "nope.iso" in text and "missing.txt" in text
    assert "images.Web Server" in text
    assert "images.Web Server.provision.0.destination" in text


def test_url_source_needs_sha256(tmp_path: Path) -> None:
    image = minimal_image(source={"iso": "https://example.invalid/d.iso"})
    with pytest.raises(SpecError, match="sha256 is required"):
        load_config(write_config(tmp_path, {"a": image}, MINIMAL_FILES))
    image["source"]["sha256"] = "ab" * 32
    assert load_config(write_config(tmp_path, {"a": image}, MINIMAL_FILES)).image("a").source.is_url


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    cfg = tmp_path / "pim.yaml"
    cfg.write_text("images:\n  a: [unclosed\n")
    with pytest.raises(SpecError, match="line 3"):
        load_config(cfg)


def test_unknown_image_lists_known_ones(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, {"web": minimal_image()}, MINIMAL_FILES))
    with pytest.raises(SpecError, match="defined: web"):
        cfg.image("db")


def test_units() -> None:
    assert parse_size("4G") == 4 << 30
    assert parse_size("512MiB") == 512 << 20
    assert parse_size(1024) == 1024
    assert parse_duration("30m") == 1800
    assert parse_duration("90s") == 90
    with pytest.raises(ValueError):
        parse_size("4 bananas")


def test_schema_forbids_unknown_keys() -> None:
    schema = json_schema()
    assert "images" in schema["properties"]
    assert schema["$defs"]["ImageSpec"]["additionalProperties"] is False
