"""Resource inputs -> engine objects, and what a change of them means.

Pure functions over the property dicts Pulumi hands a dynamic provider. Nothing
here imports Pulumi (the worker process uses it too), nothing builds, uploads or
downloads: loading a config validates it and checks that referenced files exist.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import SecretStr, TypeAdapter, ValidationError

from pim.engine.deploy.spec import AwsTarget, ProxmoxTarget, TargetSpec
from pim.engine.errors import Problem, SpecError
from pim.engine.config.spec import Config, _problems, load_config, parse_config

# A value not known yet (a preview): on the wire pulumi.runtime.rpc.UNKNOWN, which the SDK's
# dynamic server turns into a pulumi.output.Unknown object in Check and Diff. Both are
# recognised without importing Pulumi here; a test checks that the literal agrees.
UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"

# pim.Image
IMAGE_KEY_INPUTS = ("config", "spec", "base_dir", "image", "ssh_password")
IMAGE_OUTPUTS = ("content_key", "stage_keys", "path", "sha256", "size", "virtual_size", "format", "compression",
                 "arch", "firmware", "manifest_path", "created", "built_on", "sbom_path", "provenance_path",
                 "input_digests")

# pim.Deployment
DEPLOYMENT_KEY_INPUTS = ("image_name", "image_key", "manifest_path", "image_sha256", "target", "config", "base_dir",
                         "tags")
DEPLOYMENT_OUTPUTS = ("type", "target_name", "target_view", "target_base_dir", "vmid", "vmids", "node", "volume", "regions",
                      "ami_id", "snapshot_id", "ami_ids", "snapshot_ids")
# The stack config key (a Pulumi secret) the Proxmox API token secret is read from. Not an
# input: Pulumi hands Delete and Read only the stored outputs, where no secret is ever kept.
TOKEN_CONFIG_KEY = "pim:proxmoxTokenSecret"
# Target fields that say how to reach or drive the target, not what is made there:
# changing them never touches a deployment.
OPERATIONAL = frozenset({"timeout", "task_timeout", "upload_retries", "token_id", "token_secret_env",
                         "token_secret_file", "token_secret", "verify_tls", "ca_file", "ssh", "parallel", "method",
                         "s3_bucket", "s3_prefix", "image_url"})
# Target fields a deployment follows in place: retag, copy to or remove from regions.
IN_PLACE = frozenset({"tags", "copy_to", "nodes", "node"})
PVE_TAG = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9_\-+.]*$")  # PVE's pve-tag format
RESERVED_TAG_PREFIX = "pim:"


def _is_unknown(value: Any) -> bool:
    cls = type(value)
    return value == UNKNOWN if cls is str else (cls.__name__ == "Unknown" and cls.__module__ == "pulumi.output")


def has_unknown(value: Any) -> bool:
    if _is_unknown(value):
        return True
    if isinstance(value, dict):
        return any(has_unknown(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(has_unknown(v) for v in value)
    return False


def unknown_keys(props: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    return [k for k in keys if has_unknown(props.get(k))]


def plain(value: Any) -> Any:
    """Numbers arrive as protobuf doubles: 2.0 back to 2, so specs validate and hash as written."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def _input_error(prop: str, message: str) -> SpecError:
    return SpecError("inputs", [Problem(prop, message)])


# ---------------------------------------------------------------- pim.Image

def image_config(props: dict[str, Any]) -> tuple[Config, str]:
    """The engine's Config for an Image's inputs, with the image's name. Raises SpecError."""
    name, spec, config = props.get("image"), props.get("spec"), props.get("config")
    if not isinstance(name, str) or not name:
        raise _input_error("image", "the image's name is required")
    if spec is not None and config:
        raise _input_error("config", "give config (a pim.yaml) or spec (an inline image spec), not both")
    if spec is not None:
        if not isinstance(spec, dict):
            raise _input_error("spec", f"an image spec is a mapping (got {type(spec).__name__})")
        base = Path(props.get("base_dir") or ".")
        cfg = parse_config({"images": {name: plain(spec)}}, base, "spec")
    elif config:
        cfg = load_config(Path(config))
    else:
        raise _input_error("config", "give config (a pim.yaml) or spec (an inline image spec)")
    cfg.image(name)
    password = props.get("ssh_password")
    if password:
        cfg = _with_ssh_password(cfg, name, str(password))
    return cfg, name


def _with_ssh_password(cfg: Config, name: str, password: str) -> Config:
    spec = cfg.images[name]
    ssh = spec.ssh.model_copy(update={"password": SecretStr(password)})
    return cfg.model_copy(update={"images": {**cfg.images, name: spec.model_copy(update={"ssh": ssh})}})


def image_failures(err: SpecError, props: dict[str, Any]) -> list[tuple[str, str]]:
    """One (property, reason) per problem: `spec.disk_size` for an inline spec, `config`
    (the reason naming the file and the dotted path in it) for a pim.yaml."""
    name = props.get("image")
    inline = props.get("spec") is not None
    out = []
    for p in err.problems:
        if err.source == "inputs":
            out.append((p.path, p.message))
        elif p.path == f"images.{name}" and p.message.startswith("no such image"):
            out.append(("image", f"{name!r}: {p.message}"))
        elif inline and (p.path == f"images.{name}" or p.path.startswith(f"images.{name}.")):
            out.append(("spec" + p.path[len(f"images.{name}"):], p.message))
        elif inline:
            out.append(("spec", str(p)))
        else:
            out.append(("config", f"{err.source}: {p}"))
    return out


def tag_failures(tags: Any) -> list[tuple[str, str]]:
    if tags is None:
        return []
    if not isinstance(tags, dict):
        return [("tags", f"tags are a mapping of strings (got {type(tags).__name__})")]
    out = []
    for k, v in tags.items():
        if not isinstance(v, str):
            out.append((f"tags.{k}", f"a tag's value is a string (got {v!r})"))
        if k.startswith(RESERVED_TAG_PREFIX):
            out.append((f"tags.{k}", f"tags starting with {RESERVED_TAG_PREFIX!r} are PIM's own (lineage and keys)"))
    return out


# ---------------------------------------------------------------- pim.Deployment

def target_spec(props: dict[str, Any], token_secret: str | None = None) -> tuple[TargetSpec, str, Path]:
    """(target, its name, the folder its relative files are read from). Raises SpecError.

    The Deployment's tags are merged over an AWS target's tags; token_secret (from the
    stack config) becomes a Proxmox target's token secret, never written anywhere."""
    target = props.get("target")
    if isinstance(target, str):
        config = props.get("config")
        if not config:
            raise _input_error("config", f"target {target!r} is a name in a pim.yaml: give config "
                                         "(it defaults to the image's config)")
        cfg = load_config(Path(config))
        if target not in cfg.targets:
            known = ", ".join(sorted(cfg.targets)) or "none"
            raise _input_error("target", f"no target {target!r} in {config}; defined: {known}")
        spec, name, base = cfg.targets[target], target, cfg.base_dir
    elif isinstance(target, dict):
        base = Path(props.get("base_dir") or ".").resolve()
        spec, name = _validate_target(target, base), str(target.get("type"))
    else:
        raise _input_error("target", "a target's name in the config, or a target mapping "
                                     "({type: proxmox | aws, ...} as under `targets:` in pim.yaml)")
    tags = props.get("tags") or {}
    if isinstance(spec, AwsTarget) and tags:
        spec = spec.model_copy(update={"tags": {**spec.tags, **tags}})
    return with_token(spec, token_secret), name, base


def target_from_state(outs: dict[str, Any], token_secret: str | None = None) -> tuple[TargetSpec, str, Path]:
    """The target a deployment was made on, from its stored outputs (what Read and Delete get)."""
    base = Path(outs.get("target_base_dir") or ".")
    return with_token(_validate_target(outs["target_view"], base), token_secret), outs["target_name"], base


def with_token(target: TargetSpec, token_secret: str | None) -> TargetSpec:
    if token_secret and isinstance(target, ProxmoxTarget) and target.token_secret is None:
        return target.model_copy(update={"token_secret": SecretStr(str(token_secret))})
    return target


def _validate_target(data: dict[str, Any], base: Path) -> TargetSpec:
    try:
        return TypeAdapter(TargetSpec).validate_python(plain(data), context={"base_dir": base})
    except ValidationError as e:
        raise SpecError("target", [Problem(".".join(filter(None, ("target", p.path))), p.message)
                                   for p in _problems(e)]) from None


def target_failures(err: SpecError) -> list[tuple[str, str]]:
    return [(p.path or "target", p.message) for p in err.problems]


def pve_tags(tags: dict[str, str]) -> list[str]:
    """A Deployment's tags as Proxmox tags (labels, not pairs): `key-value`, or `key` for an empty value."""
    return [f"{k}-{v}" if v else k for k, v in sorted(tags.items())]


def pve_tag_failures(tags: dict[str, str]) -> list[tuple[str, str]]:
    return [(f"tags.{k}", f"{tag!r} is not a Proxmox tag: letters, digits and _-+. only, not starting with -+.")
            for (k, _), tag in zip(sorted(tags.items()), pve_tags(tags)) if not PVE_TAG.match(tag)]


def target_view(target: TargetSpec) -> dict[str, Any]:
    """The target as kept in outputs and compared by diff: every field but the token secret and
    image_url (how the bytes get there, which may hold a signed URL's signature)."""
    return target.model_dump(mode="json", exclude={"token_secret", "image_url"})


def target_changes(old: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(fields that need a new deployment, fields followed in place). Operational fields count for neither."""
    replace, in_place = [], []
    old = _as_now(old)
    for field in sorted(set(old) | set(new)):
        if field in OPERATIONAL or old.get(field) == new.get(field):
            continue
        (in_place if field in IN_PLACE else replace).append(field)
    return replace, in_place


def _as_now(view: dict[str, Any]) -> dict[str, Any]:
    """A target view kept by an older release, read as this release reads it: fields it did
    not have yet take the value its config implies (nodes: [node]), so they are no change."""
    try:
        return target_view(TypeAdapter(TargetSpec).validate_python(plain(view)))
    except (ValidationError, ValueError, TypeError):
        return view


def open_store() -> Any:
    """The store of this provider (or worker) process: $PIM_CACHE_DIR, else
    $XDG_CACHE_HOME/pim, else ~/.cache/pim (read here, at the edge)."""
    from pim.engine.paths import cache_dir
    from pim.engine.store.objects import Store

    return Store(cache_dir())
