"""Deploy targets in pim.yaml: `targets: {name: {type: proxmox|aws, ...}}`.

Pure pydantic models. Secrets are never stored here in clear: a Proxmox token
secret is named by an environment variable or a file and read only at deploy
time (`resolve_token_secret`), so `pim validate` works without credentials.
AWS credentials come from boto3's standard chain and never appear in pim.yaml.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, SecretStr, ValidationInfo,
                      WithJsonSchema, field_validator, model_validator)

from pim.engine.errors import InputError
from pim.engine.config.units import parse_duration

Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema({"anyOf": [{"type": "number"}, {"type": "string", "examples": ["30m", "90s"]}]}),
]

DEFAULT_TOKEN_ENV = "PIM_PROXMOX_TOKEN_SECRET"
_REGION_RE = r"^[a-z]{2}(-[a-z]+)+-\d+$"
_STORAGE_RE = r"^[a-zA-Z][a-zA-Z0-9\-_.]*$"  # PVE's pve-storage-id format


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProxmoxSSH(_Model):
    """How to reach the node's shell for the fallback used by PVE releases before 8.4."""

    host: str | None = Field(None, description="Defaults to the API URL's host")
    port: int = Field(22, ge=1, le=65535)
    user: str = "root"
    key_file: str | None = Field(None, description="Private key; else the SSH agent and ~/.ssh keys")
    known_hosts: str | None = Field(None, description="known_hosts file to verify the node's host key (default ~/.ssh/known_hosts)")
    upload_dir: str = Field("/var/tmp/pim", pattern=r"^/", description="Where uploads are kept on the node")


class ProxmoxTarget(_Model):
    type: Literal["proxmox"]
    api_url: str = Field(description="https://host:8006 of any cluster node")
    node: str = Field(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9.-]*$", description="Node that holds the template")
    storage: str = Field(pattern=_STORAGE_RE, description="Storage for the VM disk and cloud-init drive")
    upload_storage: str = Field("local", pattern=_STORAGE_RE,
                                description="File storage with the 'import' content type (PVE 8.4+) for uploads")
    token_id: str = Field(pattern=r"^[^@!\s]+@[^@!\s]+![A-Za-z][A-Za-z0-9._-]*$",
                          description="API token id, e.g. pim@pve!deploy")
    token_secret_env: str | None = Field(None, description=f"Env var holding the token secret (default {DEFAULT_TOKEN_ENV})")
    token_secret_file: str | None = Field(None, description="File holding the token secret")
    token_secret: SecretStr | None = Field(None, description="The secret itself (for IaC front ends; avoid in files)")
    verify_tls: bool = Field(True, description="Verify the API's TLS certificate")
    ca_file: str | None = Field(None, description="CA bundle that signed the API's certificate")
    timeout: Duration = Field(60.0, description="Per-request network timeout")
    task_timeout: Duration = Field(1800.0, description="Deadline for each PVE task (upload copy, import, template)")
    upload_retries: int = Field(3, ge=1, le=10)
    bridge: str = Field("vmbr0", pattern=r"^[a-zA-Z][a-zA-Z0-9_.-]*$")
    cores: int = Field(2, ge=1, le=512)
    memory_mb: int = Field(2048, ge=16)
    vmid_min: int | None = Field(None, ge=100, le=999999999, description="Lowest VMID to use (default: PVE's next free)")
    ssh: ProxmoxSSH | None = Field(None, description="Needed only for PVE before 8.4 (no disk-image import content)")

    @field_validator("api_url")
    @classmethod
    def _https(cls, v: str) -> str:
        if not re.fullmatch(r"https://[^/\s]+(:\d+)?/?", v):
            raise ValueError(f"{v!r} is not an https://host[:port] URL")
        return v.rstrip("/")


class AwsTarget(_Model):
    type: Literal["aws"]
    region: str = Field(pattern=_REGION_RE)
    copy_to: list[Annotated[str, Field(pattern=_REGION_RE)]] = Field([], description="More regions to copy the AMI to")
    method: Literal["direct", "import"] = Field(
        "direct", description="direct: EBS direct APIs; import: S3 upload + import-snapshot (needs s3_bucket)")
    s3_bucket: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    s3_prefix: str = "pim/"
    profile: str | None = Field(None, description="boto3 profile; default: the standard credential chain")
    endpoint_url: str | None = Field(None, description="Override every AWS endpoint (a local test server)")
    volume_type: Literal["gp3", "gp2", "io1", "io2", "st1", "sc1", "standard"] = "gp3"
    root_device: str = Field("/dev/xvda", pattern=r"^/dev/[a-z0-9]+$")
    ena: bool = True
    parallel: int = Field(8, ge=1, le=64, description="Blocks uploaded at once")
    task_timeout: Duration = Field(3600.0, description="Deadline for snapshot, import and copy waits")
    tags: dict[str, str] = Field({}, description="Extra tags on AMIs and snapshots")

    @field_validator("copy_to")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("copy_to lists a region twice")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "AwsTarget":
        if self.region in self.copy_to:
            raise ValueError(f"copy_to repeats the home region {self.region!r}")
        if self.method == "import" and not self.s3_bucket:
            raise ValueError("method 'import' needs s3_bucket")
        return self

    @property
    def regions(self) -> list[str]:
        return [self.region, *self.copy_to]


_TYPES: dict[str, type[_Model]] = {"proxmox": ProxmoxTarget, "aws": AwsTarget}


def _pick_type(value: object, info: ValidationInfo) -> object:
    # Dispatch on `type` by hand: a discriminated union would put the tag into every
    # error path (targets.pve.proxmox.node); this keeps them as written (targets.pve.node).
    if isinstance(value, (ProxmoxTarget, AwsTarget)):
        return value
    kind = value.get("type") if isinstance(value, dict) else None
    model = _TYPES.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise ValueError(f"type must be one of {', '.join(_TYPES)} (got {kind!r})")
    return model.model_validate(value, context=info.context)


TargetSpec = Annotated[Union[ProxmoxTarget, AwsTarget],
                       PlainValidator(_pick_type, json_schema_input_type=Union[ProxmoxTarget, AwsTarget])]


def resolve_token_secret(target: ProxmoxTarget, base_dir: Path | None = None) -> SecretStr:
    """The token secret, read now; the error names the env var or file to fix."""
    if target.token_secret is not None:
        return target.token_secret
    if target.token_secret_file:
        path = (base_dir or Path(".")) / os.path.expanduser(target.token_secret_file)
        try:
            value = path.read_text().strip()
        except OSError as e:
            raise InputError(f"token_secret_file {str(path)!r} cannot be read: {e.strerror}") from None
        if not value:
            raise InputError(f"token_secret_file {str(path)!r} is empty")
        return SecretStr(value)
    var = target.token_secret_env or DEFAULT_TOKEN_ENV
    value = os.environ.get(var, "").strip()
    if not value:
        raise InputError(f"the Proxmox API token secret is missing: set the environment variable {var} "
                         "(or token_secret_file in the target)")
    return SecretStr(value)
