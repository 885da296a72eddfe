"""`cache:` in pim.yaml and in the per-user config: where the shared build cache lives.

    cache:
      remote: s3://bucket/prefix      # AWS S3, MinIO, Ceph RGW: anything S3-compatible
      endpoint_url: http://127.0.0.1:9000   # not AWS: the service's URL
      region: eu-west-1
      profile: team                   # a profile of ~/.aws/config; credentials come from
      push: true                      # boto3's standard chain, never from this file

Pure pydantic: nothing here talks to the network.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

# S3 bucket names (docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html):
# 3-63 characters, lower-case letters, digits, dots and hyphens, a letter or digit at each end.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class CacheSpec(BaseModel):
    """The remote build cache; `bucket` and `prefix` come from `remote`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    remote: str = Field(description="s3://bucket[/prefix]: where stage objects are shared")
    endpoint_url: str | None = Field(None, description="The S3 service's URL when it is not AWS (MinIO, Ceph RGW)")
    region: str | None = None
    profile: str | None = Field(None, description="A profile of the AWS config files; credentials never go here")
    push: bool = Field(True, description="Upload what builds produce (false: pull only, e.g. CI on pull requests)")

    @field_validator("remote")
    @classmethod
    def _s3_url(cls, value: str) -> str:
        m = re.fullmatch(r"s3://([^/]+)(/.*)?", value)
        if not m or not _BUCKET.match(m[1]):
            raise ValueError(f"{value!r} is not an S3 location: write s3://bucket or s3://bucket/prefix "
                             "(a bucket name is 3-63 lower-case letters, digits, '.' and '-')")
        return value.rstrip("/")

    @field_validator("endpoint_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/]+", value):
            raise ValueError(f"{value!r} is not a URL: write http(s)://host[:port]")
        return value

    @property
    def bucket(self) -> str:
        return self.remote[len("s3://"):].split("/", 1)[0]

    @property
    def prefix(self) -> str:
        """The key prefix inside the bucket, '' or ending in '/'."""
        rest = self.remote[len("s3://"):].partition("/")[2].strip("/")
        return f"{rest}/" if rest else ""


def merge(user: dict[str, Any] | None, project: dict[str, Any] | None) -> CacheSpec | None:
    """The effective cache settings: the per-user file's, with pim.yaml's fields over them.

    Either may be None. A team's pim.yaml can name the bucket while each user's file
    names the profile. Raises pydantic.ValidationError for a bad value or unknown key.
    """
    data = {**(user or {}), **(project or {})}
    return CacheSpec.model_validate(data) if data.get("remote") else None
