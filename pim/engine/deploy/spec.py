"""Deploy targets in pim.yaml: `targets: {name: {type: proxmox|aws, ...}}`.

Pure pydantic models. Secrets are never stored here in clear: a Proxmox token
secret is named by an environment variable or a file and read only at deploy
time (`resolve_token_secret`), so `pim validate` works without credentials.
AWS credentials come from boto3's standard chain and never appear in pim.yaml.
"""

from __future__ import annotations

import ipaddress
import os
import re
from functools import cache
from pathlib import Path
from typing import Annotated, Literal, Union
from urllib.parse import urlsplit

from pydantic import (BaseModel, ConfigDict, Field, PlainValidator, SecretStr, ValidationInfo, field_validator,
                      model_validator)

from pim.engine.errors import InputError
from pim.engine.config.units import Duration, GuestPath, matching

DEFAULT_TOKEN_ENV = "PIM_PROXMOX_TOKEN_SECRET"

# Proxmox VE's own formats, from its API schema (pve-common src/PVE/JSONSchema.pm):
# pve-node (pve_verify_node_name) and pve-storage-id (parse_id); a storage id is at
# least two characters and ends in a letter or digit.
_NODE_RE = r"^[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?$"
_STORAGE_RE = r"^[a-zA-Z][a-zA-Z0-9\-_.]*[a-zA-Z0-9]$"
# pve-bridge-id (parse_bridge_id) is `[-_.\w\d]+`; the bridge is also a Linux interface,
# and the kernel's dev_valid_name() refuses names of IFNAMSIZ (16) or more and "."/"..".
_BRIDGE_RE = r"^(?!\.{1,2}$)[-_.a-zA-Z0-9]{1,15}$"
# API token ids, pve-manager/pve-access-control PVE/AccessControl.pm $token_full_regex:
# user (PVE::Auth::Plugin $user_regex) @ realm ($realm_regex) ! token (the realm regex again).
# The userid part is 3..64 characters (verify_username) and a realm at most 32 (pve-realm).
_REALM = r"[A-Za-z][A-Za-z0-9.\-_]+"
_TOKEN_RE = re.compile(rf"(?P<userid>[^\s:/]+@(?P<realm>{_REALM}))!(?P<token>{_REALM})")
# The VMID range of pve-vmid (JSONSchema.pm: minimum 100, maximum 999_999_999).
VMID_MIN, VMID_MAX = 100, 999_999_999
# PVE::QemuServer::Memory $MAX_MEM (MiB) and the `memory` option's minimum of 16 MiB.
PVE_MEMORY_MIB = (16, 4_194_304)

# S3 general purpose bucket naming rules (Amazon S3 User Guide, "General purpose bucket
# naming rules"): 3..63 of a-z 0-9 . -, a letter or digit at each end, no "..", not an
# IPv4 address, and these reserved prefixes and suffixes.
S3_KEY_MAX = 1024
_BUCKET_RE = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
_BUCKET_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_BUCKET_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
# EC2 tags (EC2 User Guide, "Tag restrictions"): a key of 1..128 characters, a value of
# up to 256, any characters in EC2, 50 tags a resource; keys starting with aws: (any case)
# are AWS's own. PIM writes at most 12 tags of its own (Name, pim:key, pim:image,
# pim:sha256, one per lineage entry (iso, install, provision, final), pim:sbom,
# pim:provenance, pim:snapshot on the AMI, and one to spare), so 38 are left for the config.
AWS_TAG_KEY_MAX, AWS_TAG_VALUE_MAX, AWS_TAGS_MAX, PIM_TAGS_MAX = 128, 256, 50, 12
# Root volume types PIM can register: io1/io2 need provisioned IOPS (RegisterImage's
# EbsBlockDevice.Iops, which PIM does not set) and st1/sc1 cannot be boot volumes
# (EBS User Guide, "Amazon EBS volume types").
_ROOT_VOLUME_TYPES = ("gp3", "gp2", "standard")
_UNUSABLE_VOLUME_TYPES = {"io1": "needs provisioned IOPS, which pim does not set",
                          "io2": "needs provisioned IOPS, which pim does not set",
                          "st1": "cannot be a boot volume", "sc1": "cannot be a boot volume"}


@cache
def _region_patterns() -> tuple[re.Pattern[str], ...]:
    """The region patterns of every AWS partition, from botocore's own endpoint data."""
    from botocore.loaders import Loader

    return tuple(re.compile(p["regionRegex"], re.ASCII) for p in Loader().load_data("partitions")["partitions"])


def check_region(value: str) -> str:
    """An AWS region name as botocore's partitions define them (us-east-1, cn-north-1,
    us-gov-west-1, eusc-de-east-1 ...); ValueError quoting the value otherwise."""
    if not any(p.fullmatch(value) for p in _region_patterns()):
        raise ValueError(f"{value!r} is not an AWS region name: write it as AWS does, e.g. 'us-east-1', "
                         "'eu-west-3' or 'us-gov-west-1' (`aws ec2 describe-regions` lists them)")
    return value


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


Region = Annotated[str, PlainValidator(check_region, json_schema_input_type=str)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_NodeName = matching(_NODE_RE, "a PVE node name is letters, digits and '-', not starting or ending with '-' "
                               "(the short name, no domain)", "pve1")
_Bridge = matching(_BRIDGE_RE, "a bridge is a Linux interface name: 1 to 15 letters, digits, '-', '_' and '.', "
                               "not '.' or '..'", "vmbr0")
_StorageId = matching(_STORAGE_RE, "a PVE storage id starts with a letter, ends with a letter or digit and has "
                                   "only letters, digits, '-', '_' and '.' (2 characters at least)", "local-lvm")


class ProxmoxSSH(_Model):
    """How to reach the node's shell for the fallback used by PVE releases before 8.4."""

    host: str | None = Field(None, description="Defaults to the API URL's host")
    port: int = Field(22, ge=1, le=65535)
    user: str = "root"
    key_file: str | None = Field(None, description="Private key; else the SSH agent and ~/.ssh keys")
    known_hosts: str | None = Field(None, description="known_hosts file to verify the node's host key (default ~/.ssh/known_hosts)")
    upload_dir: GuestPath = Field("/var/tmp/pim", description="Where uploads are kept on the node")


class ProxmoxTarget(_Model):
    type: Literal["proxmox"]
    api_url: str = Field(description="https://host:8006 of any cluster node")
    node: _NodeName | None = Field(None, description="Node that holds the template (its short name, as in "
                                                     "`pvecm nodes`); with `nodes`, the first of them")
    nodes: list[_NodeName] = Field([], description="Build one template on each of these nodes (a cluster without "
                                   "shared storage cannot clone a template across nodes); default [node]")
    storage: _StorageId = Field(description="Storage for the VM disk and cloud-init drive")
    upload_storage: _StorageId = Field("local",
                                description="File storage with the 'import' content type (PVE 8.4+) for uploads")
    token_id: str = Field(description="API token id, user@realm!token, e.g. pim@pve!deploy")
    token_secret_env: str | None = Field(None, description=f"Env var holding the token secret (default {DEFAULT_TOKEN_ENV})")
    token_secret_file: str | None = Field(None, description="File holding the token secret")
    token_secret: SecretStr | None = Field(None, description="The secret itself (for IaC front ends; avoid in files)")
    verify_tls: bool = Field(True, description="Verify the API's TLS certificate")
    ca_file: str | None = Field(None, description="CA bundle that signed the API's certificate")
    timeout: Duration = Field(60.0, gt=0, description="Per-request network timeout")
    task_timeout: Duration = Field(1800.0, gt=0, description="Deadline for each PVE task (upload copy, import, template)")
    upload_retries: int = Field(3, ge=1, le=10)
    image_url: str | None = Field(None, description="Let PVE fetch the qcow2 itself from this http(s) URL "
                                  "(download-url, PVE 8.4+) instead of an upload through this client; "
                                  "{name}, {key}, {sha256} and {filename} are filled in. PVE checks the sha256.")
    bridge: _Bridge = Field("vmbr0", description="Bridge for the VM's network card")
    cores: int = Field(2, ge=1, description="Cores of the template VM (PVE: at least 1)")
    memory_mb: int = Field(2048, ge=PVE_MEMORY_MIB[0], le=PVE_MEMORY_MIB[1], description="Memory of the template VM, MiB")
    vmid_min: int | None = Field(None, ge=VMID_MIN, le=VMID_MAX, description="Lowest VMID to use (default: PVE's next free)")
    ssh: ProxmoxSSH | None = Field(None, description="Needed only for PVE before 8.4 (no disk-image import content)")

    @field_validator("api_url")
    @classmethod
    def _https(cls, v: str) -> str:
        url = urlsplit(v)
        try:
            port = url.port
        except ValueError:
            port = 0
        if (url.scheme != "https" or not url.hostname or port == 0 or url.path not in ("", "/")
                or url.query or url.fragment or url.username or re.search(r"\s", v)):
            raise ValueError(f"{v!r} is not an https://host[:port] URL (port 1-65535, no path): "
                             "write e.g. https://pve.example:8006")
        return v.rstrip("/")

    @field_validator("image_url")
    @classmethod
    def _image_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        url = urlsplit(v)
        if url.scheme not in ("http", "https") or not url.hostname or re.search(r"\s", v):
            raise ValueError(f"{v!r} is not an http(s) URL PVE can download from: write e.g. "
                             "https://images.example/{filename}")
        if url.username or url.password:
            raise ValueError("image_url must not hold a user or password (it would reach PVE's task log and "
                             "this deploy's state): use a URL the PVE node may fetch as it is, e.g. a signed one")
        unknown = set(re.findall(r"{([^}]*)}", v)) - {"name", "key", "sha256", "filename"}
        if unknown:
            raise ValueError(f"image_url {v!r}: unknown placeholder(s) {', '.join(sorted(unknown))}: "
                             "use {name}, {key}, {sha256} or {filename}")
        try:
            v.format(name="n", key="k", sha256="s", filename="f")
        except (ValueError, IndexError, AttributeError) as e:
            raise ValueError(f"image_url {v!r}: {e}: write a literal brace as {{{{ or }}}}") from None
        return v

    @model_validator(mode="before")
    @classmethod
    def _nodes(cls, data: object) -> object:
        # node is nodes[0]: filled in both ways before the fields are checked (the model is frozen).
        if not isinstance(data, dict):
            return data
        node, nodes = data.get("node"), data.get("nodes") or []
        if not isinstance(nodes, list):
            return data  # the field's own check reports it
        if not nodes and node is None:
            raise ValueError("set node (the node that holds the template) or nodes (one template on each)")
        if len(set(map(str, nodes))) != len(nodes):
            raise ValueError(f"nodes repeats a node: {nodes}")
        if nodes and node is not None and node != nodes[0]:
            raise ValueError(f"node {node!r} and nodes {nodes}: set one of them (node is nodes[0])")
        return {**data, "node": nodes[0] if nodes else node, "nodes": nodes or [node]}

    @field_validator("token_id")
    @classmethod
    def _token_id(cls, v: str) -> str:
        m = _TOKEN_RE.fullmatch(v)
        rule = ("user@realm!token: the user without spaces, ':' or '/', the realm and the token name each a letter "
                "then at least one more letter, digit, '.', '-' or '_'")
        if not m:
            raise ValueError(f"{v!r} is not a Proxmox API token id: write {rule}, e.g. pim@pve!deploy")
        if not 3 <= len(m["userid"]) <= 64:
            raise ValueError(f"{v!r}: the user id {m['userid']!r} must be 3 to 64 characters (PVE's limit)")
        if len(m["realm"]) > 32:
            raise ValueError(f"{v!r}: the realm {m['realm']!r} is longer than PVE's 32 characters")
        return v


class AwsTarget(_Model):
    type: Literal["aws"]
    region: Region
    copy_to: list[Region] = Field([], description="More regions to copy the AMI to")
    method: Literal["direct", "import"] = Field(
        "direct", description="direct: EBS direct APIs; import: S3 upload + import-snapshot (needs s3_bucket)")
    s3_bucket: str | None = Field(None, description="Bucket for method import (S3's bucket naming rules)")
    s3_prefix: str = Field("pim/", description="Key prefix of the uploads in s3_bucket")
    profile: str | None = Field(None, description="boto3 profile; default: the standard credential chain")
    endpoint_url: str | None = Field(None, description="Override every AWS endpoint (a local test server)")
    volume_type: str = Field("gp3", description=f"EBS type of the root volume: {', '.join(_ROOT_VOLUME_TYPES)}",
                             json_schema_extra={"enum": list(_ROOT_VOLUME_TYPES)})
    # EC2 names the root device /dev/xvda or /dev/sda1 (EC2 User Guide, "Device names on
    # Linux instances"); any /dev/<name> is passed through for AMIs that expect another.
    root_device: matching(r"/dev/[a-z0-9]+", "a device name under /dev", "/dev/xvda") = Field(
        "/dev/xvda", description="Root device name of the AMI")
    ena: bool = True
    parallel: int = Field(8, ge=1, le=64, description="Blocks uploaded at once")
    task_timeout: Duration = Field(3600.0, gt=0, description="Deadline for snapshot, import and copy waits")
    tags: dict[str, str] = Field({}, description="Extra tags on AMIs and snapshots (EC2's rules; not aws: or pim:)")

    @field_validator("s3_bucket")
    @classmethod
    def _bucket(cls, v: str | None) -> str | None:
        if v is None:
            return v
        rule = ("3 to 63 lowercase letters, digits, '.' and '-', starting and ending with a letter or digit, "
                "without '..'")
        if not re.fullmatch(_BUCKET_RE, v) or ".." in v:
            raise ValueError(f"{v!r} is not an S3 bucket name: use {rule}")
        if _is_ipv4(v):
            raise ValueError(f"{v!r} is not an S3 bucket name: it must not look like an IP address")
        bad = [p for p in _BUCKET_PREFIXES if v.startswith(p)] + [x for x in _BUCKET_SUFFIXES if v.endswith(x)]
        if bad:
            raise ValueError(f"{v!r} is not an S3 bucket name: {bad[0]!r} is reserved by S3; choose another name")
        return v

    @field_validator("s3_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        # An S3 object key is at most 1024 bytes of UTF-8 (S3 User Guide, "Naming Amazon S3
        # objects"); pim appends "<image name>-<16 hex>.raw", at most 84 more.
        if len(v.encode()) > S3_KEY_MAX - 84:
            raise ValueError(f"s3_prefix is {len(v.encode())} bytes: S3 keys are at most {S3_KEY_MAX} bytes and "
                             f"pim adds up to 84, so keep it to {S3_KEY_MAX - 84}")
        return v

    @field_validator("volume_type")
    @classmethod
    def _volume_type(cls, v: str) -> str:
        if v in _UNUSABLE_VOLUME_TYPES:
            raise ValueError(f"volume_type {v!r} {_UNUSABLE_VOLUME_TYPES[v]}: use one of "
                             f"{', '.join(_ROOT_VOLUME_TYPES)}")
        if v not in _ROOT_VOLUME_TYPES:
            raise ValueError(f"{v!r} is not an EBS volume type: use one of {', '.join(_ROOT_VOLUME_TYPES)}")
        return v

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: dict[str, str]) -> dict[str, str]:
        room = AWS_TAGS_MAX - PIM_TAGS_MAX
        if len(v) > room:
            raise ValueError(f"{len(v)} tags: EC2 takes {AWS_TAGS_MAX} a resource and pim writes up to "
                             f"{PIM_TAGS_MAX} of its own, so give at most {room}")
        for key, value in v.items():
            if not 1 <= len(key) <= AWS_TAG_KEY_MAX:
                raise ValueError(f"tag key {key!r} must be 1 to {AWS_TAG_KEY_MAX} characters (has {len(key)})")
            if key.lower().startswith("aws:"):
                raise ValueError(f"tag key {key!r}: the prefix 'aws:' is reserved by AWS; use another prefix")
            if key.lower().startswith("pim:"):
                raise ValueError(f"tag key {key!r}: the prefix 'pim:' is pim's own (it finds its images by "
                                 "these tags); use another prefix")
            if len(value) > AWS_TAG_VALUE_MAX:
                raise ValueError(f"tag {key!r}: the value is {len(value)} characters, EC2 takes at most "
                                 f"{AWS_TAG_VALUE_MAX}")
        return v

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
