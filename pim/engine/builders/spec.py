"""`builders:` in pim.yaml and in the per-user `builders.yaml`: the machines that build.

    builders:
      arm-box:
        uri: ssh://pim@arm-box.lan:22     # ssh://[user@]host[:port]
        key_file: ~/.ssh/id_ed25519       # else ssh-agent and the default keys
        known_hosts: ~/.ssh/known_hosts   # host keys are checked against it, always
        systems: {aarch64: kvm}           # the architectures it builds, with which accelerator
        max_jobs: 2                       # builds at once on it (slots held on the builder)
        speed_factor: 2.0                 # how much faster than a speed-1 builder
        pim: /opt/pim/bin/pim             # the PIM command on it
        cache_dir: /var/cache/pim         # its store (default: the builder user's PIM cache)
        fetch: true                       # false: artifacts stay on it (e.g. a Proxmox node)
      local:
        max_jobs: 1                       # the machine PIM runs on is the builder `local`

Modelled on Nix's remote builders (nix.conf `builders`: URI, systems, SSH key,
max-jobs, speed-factor, supported features). Pure pydantic: nothing here connects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

LOCAL = "local"
ArchName = Literal["x86_64", "aarch64"]
AccelName = Literal["kvm", "hvf", "tcg"]
HARDWARE = ("kvm", "hvf")

# ssh://[user@]host[:port]; host a DNS name, IPv4 or [IPv6] (RFC 3986 authority).
_SSH_URI = re.compile(r"^ssh://(?:(?P<user>[A-Za-z0-9._][A-Za-z0-9._-]*)@)?"
                      r"(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::(?P<port>\d{1,5}))?/?$")


class BuilderSpec(BaseModel):
    """One builder as configured. The builder `local` takes no `uri`, key or command."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str | None = Field(None, description="ssh://[user@]host[:port] of the builder")
    key_file: str | None = Field(None, description="Private key for SSH (else ssh-agent and ~/.ssh/id_*)")
    known_hosts: str | None = Field(None, description="known_hosts file checked for the builder's host key "
                                                      "(default ~/.ssh/known_hosts)")
    systems: dict[ArchName, AccelName] = Field({}, description="Architectures it builds and the accelerator "
                                                               "for each, e.g. {aarch64: kvm}")
    max_jobs: int = Field(1, ge=1, le=256, description="Builds it runs at once")
    speed_factor: float = Field(1.0, gt=0, le=1000, description="Relative speed; the faster builder is preferred")
    pim: str = Field("pim", description="The PIM command on the builder")
    cache_dir: str | None = Field(None, description="The builder's store (default: its user's PIM cache)")
    fetch: bool = Field(True, description="Bring artifacts back into the local store (false: they stay on the "
                                          "builder, recorded locally; `pim build --no-fetch` does the same once)")

    @field_validator("uri")
    @classmethod
    def _ssh_uri(cls, value: str | None) -> str | None:
        if value is not None:
            m = _SSH_URI.match(value)
            if not m or (m["port"] and not 0 < int(m["port"]) < 65536):
                raise ValueError(f"{value!r} is not an SSH address: write ssh://user@host or ssh://user@host:2222")
        return value


@dataclass(frozen=True)
class Builder:
    """A builder as routing and the SSH client use it (paths expanded, address split)."""

    name: str
    systems: Mapping[str, str]
    max_jobs: int = 1
    speed_factor: float = 1.0
    user: str | None = None
    host: str | None = None
    port: int = 22
    key_file: Path | None = None
    known_hosts: Path | None = None
    pim: str = "pim"
    cache_dir: str | None = None
    fetch: bool = True

    @property
    def is_local(self) -> bool:
        return self.host is None

    @property
    def address(self) -> str:
        """user@host:port as people write it, or 'local'."""
        if self.host is None:
            return LOCAL
        return f"{self.user + '@' if self.user else ''}{self.host}{':' + str(self.port) if self.port != 22 else ''}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "address": self.address, "systems": dict(self.systems),
                "max_jobs": self.max_jobs, "speed_factor": self.speed_factor}


def _expand(path: str | None) -> Path | None:
    return Path(path).expanduser() if path else None


def resolve(name: str, spec: BuilderSpec, local_systems: Mapping[str, str]) -> Builder:
    """The usable form of builder `name`. `local_systems`: what `local` builds
    ({arch: accelerator}, from this host's probe) unless the spec names its systems.
    Raises ValueError for `local` with an address, or a remote builder without one."""
    if name == LOCAL:
        if spec.uri or spec.key_file or spec.known_hosts or spec.pim != "pim" or spec.cache_dir or not spec.fetch:
            raise ValueError("the builder `local` is this machine: it takes only systems, max_jobs and speed_factor")
        return Builder(LOCAL, dict(spec.systems or local_systems), spec.max_jobs, spec.speed_factor)
    if spec.uri is None:
        raise ValueError(f"builder {name!r} needs uri: ssh://user@host[:port]")
    if not spec.systems:
        raise ValueError(f"builder {name!r} needs systems, e.g. {{x86_64: kvm}}: the architectures it builds")
    m = _SSH_URI.match(spec.uri)
    assert m is not None  # checked by the model
    host = m["host"].strip("[]")
    return Builder(name, dict(spec.systems), spec.max_jobs, spec.speed_factor, m["user"], host,
                   int(m["port"] or 22), _expand(spec.key_file), _expand(spec.known_hosts),
                   spec.pim, spec.cache_dir, spec.fetch)


# How a builder is reached and what runs there: for a builder in the per-user file, these
# come from that file only, so a project's pim.yaml cannot point the user's key at
# another host or command.
CONNECTION = ("uri", "key_file", "known_hosts", "pim", "cache_dir")


def merge(user: Mapping[str, Any] | None, project: Mapping[str, Any] | None) -> dict[str, BuilderSpec]:
    """The effective builders: every name from either file. For a name in both, the
    per-user entry's fields with pim.yaml's over them (the same rule as `cache:`),
    except the CONNECTION fields, which stay the per-user file's; a builder only in
    pim.yaml may name its `pim` program but give it no shell words. Raises
    pydantic.ValidationError for a bad entry, ValueError for such a `pim`."""
    out: dict[str, BuilderSpec] = {}
    user, project = user or {}, project or {}
    for name in {**user, **project}:
        mine, theirs = dict(user.get(name) or {}), dict(project.get(name) or {})
        if name in user:
            theirs = {k: v for k, v in theirs.items() if k not in CONNECTION}
        elif "pim" in theirs and not re.fullmatch(r"[A-Za-z0-9_./+-]+", str(theirs["pim"])):
            # run as a shell line over SSH with the user's keys: a project names a program, no more
            raise ValueError(f"builder {name!r}: pim.yaml may set pim: to a program's path only (got "
                             f"{theirs['pim']!r}); a command line with arguments goes in your per-user "
                             "builders.yaml")
        out[name] = BuilderSpec.model_validate({**mine, **theirs})
    return out


class BuildersFile(BaseModel):
    """The per-user builders file: `builders:` and nothing else."""

    model_config = ConfigDict(extra="forbid")

    builders: dict[str, dict[str, Any]] = {}

    @model_validator(mode="after")
    def _names(self) -> "BuildersFile":
        for name in self.builders:
            if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,62}", name):
                raise ValueError(f"builder name {name!r}: use 1 to 63 of a-z, 0-9, '.', '_' and '-'")
        return self
