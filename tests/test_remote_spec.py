"""`cache:` settings: what pim.yaml and the per-user file accept, and which wins."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from pim.engine.config.spec import parse_config
from pim.engine.errors import InputError, SpecError
from pim.engine.remote import open_remote
from pim.engine.remote.spec import CacheSpec, merge


@pytest.mark.parametrize("url,bucket,prefix", [
    ("s3://team-cache", "team-cache", ""),
    ("s3://team-cache/", "team-cache", ""),
    ("s3://team.cache/pim/images", "team.cache", "pim/images/"),
])
def test_an_s3_location_splits_into_bucket_and_prefix(url: str, bucket: str, prefix: str) -> None:
    spec = CacheSpec(remote=url)
    assert (spec.bucket, spec.prefix, spec.push) == (bucket, prefix, True)


@pytest.mark.parametrize("url", ["https://team-cache", "s3://", "s3://Team_Cache", "s3://ab", "team-cache"])
def test_what_is_not_an_s3_location_is_refused_with_the_form_to_write(url: str) -> None:
    with pytest.raises(ValidationError, match=r"write s3://bucket or s3://bucket/prefix"):
        CacheSpec(remote=url)


def test_pim_yaml_fields_win_over_the_per_user_file_field_by_field() -> None:
    spec = merge({"remote": "s3://mine", "profile": "me", "push": False}, {"remote": "s3://team", "region": "eu-west-1"})
    assert spec is not None
    assert (spec.remote, spec.profile, spec.region, spec.push) == ("s3://team", "me", "eu-west-1", False)
    assert merge({"profile": "me"}, None) is None  # no bucket named anywhere: no remote cache


def test_credentials_have_no_place_in_the_settings() -> None:
    with pytest.raises(ValidationError, match="aws_secret_access_key"):
        CacheSpec(remote="s3://team", aws_secret_access_key="x")  # type: ignore[call-arg]


def _cfg(tmp_path: Path, cache: dict | None) -> object:
    (tmp_path / "a.iso").write_bytes(b"")
    (tmp_path / "answer.txt").write_text("")
    data: dict = {"images": {"web": {"source": {"iso": "a.iso"}, "installer": {"family": "debian"}}}}
    if cache is not None:
        data["cache"] = cache
    return parse_config(data, tmp_path, "pim.yaml")


def test_a_bad_cache_in_pim_yaml_is_a_spec_error_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"cache\.remote"):
        _cfg(tmp_path, {"remote": "http://x"})
    with pytest.raises(SpecError, match=r"cache\.bucket"):
        _cfg(tmp_path, {"remote": "s3://team", "bucket": "team"})


def test_open_remote_reads_the_per_user_file_and_makes_no_network_call(tmp_path: Path) -> None:
    user = tmp_path / "config.yaml"
    cfg = _cfg(tmp_path, None)
    assert open_remote(cfg, user_file=user) is None  # no file, no cache
    user.write_text(yaml.safe_dump({"cache": {"remote": "s3://team/pim", "endpoint_url": "http://127.0.0.1:9"}}))
    bucket = open_remote(cfg, user_file=user)
    assert bucket is not None and (bucket.name, bucket.prefix) == ("team", "pim/")
    assert bucket.manifest_key("ab" * 32) == f"pim/manifests/{'ab' * 32}.json"
    assert open_remote(cfg, enabled=False, user_file=user) is None  # --no-remote-cache
    user.write_text(yaml.safe_dump({"cache": {"remote": "s3://team", "pushh": True}}))
    with pytest.raises(InputError, match=rf"{user}: cache\.pushh"):
        open_remote(cfg, user_file=user)
