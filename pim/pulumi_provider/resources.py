"""What a Pulumi program uses: `pim.Image` and `pim.Deployment`.

    img = pim.Image("web", config="pim.yaml", image="debian-12")
    tpl = pim.Deployment("web-pve", image=img, target="pve")        # a target in pim.yaml
    ami = pim.Deployment("web-aws", image=img, target={"type": "aws", "region": "eu-west-1"})

Paths are made absolute here, in the program's folder, because the provider
process may run elsewhere. `customTimeouts` become the hidden input `timeouts`:
the SDK's dynamic-provider server does not pass the engine's timeout on, so the
provider enforces them itself (see worker.py).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional

import pulumi
from pulumi.dynamic import Resource

from pim.pulumi_provider.deployment import DeploymentProvider
from pim.pulumi_provider.image import ImageProvider
from pim.pulumi_provider.inputs import DEPLOYMENT_OUTPUTS, IMAGE_OUTPUTS

_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration(text: str) -> float:
    """Seconds in a customTimeouts value ('30m', '1h30m', '90s'), as the engine reads them."""
    text = text.strip()
    if not text or _GO_DURATION.sub("", text):
        raise ValueError(f"{text!r} is not a duration like '30m', '1h30m' or '90s'")
    return sum(float(n) * _UNIT[u] for n, u in _GO_DURATION.findall(text))


def timeouts_of(opts: Optional[pulumi.ResourceOptions]) -> Optional[dict[str, float]]:
    ct = opts.custom_timeouts if opts is not None else None
    if ct is None:
        return None
    out = {op: go_duration(v) for op in ("create", "update", "delete") if (v := getattr(ct, op, None))}
    return out or None


def _absolute(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)):
        return str(Path(value).expanduser().resolve())
    return pulumi.Output.from_input(value).apply(lambda v: str(Path(v).expanduser().resolve()) if v else v)


class Image(Resource, module="pim", name="Image"):
    """A PIM image build. Outputs: content_key, stage_keys, path (the qcow2), sha256, size,
    virtual_size, format, compression, arch, firmware, manifest_path, created, built_on,
    sbom_path (CycloneDX JSON), provenance_path (DSSE-signed SLSA provenance), input_digests
    (the named inputs it was built from; a replacement names the ones that changed)
    (local, or the builder that built it)."""

    content_key: pulumi.Output[str]
    stage_keys: pulumi.Output[dict]
    path: pulumi.Output[str]
    sha256: pulumi.Output[str]
    size: pulumi.Output[int]
    virtual_size: pulumi.Output[int]
    format: pulumi.Output[str]
    compression: pulumi.Output[str]
    arch: pulumi.Output[str]
    firmware: pulumi.Output[str]
    manifest_path: pulumi.Output[str]
    created: pulumi.Output[str]
    built_on: pulumi.Output[str]
    sbom_path: pulumi.Output[str]
    provenance_path: pulumi.Output[str]
    input_digests: pulumi.Output[dict]
    image: pulumi.Output[str]
    tags: pulumi.Output[dict]

    def __init__(self, resource_name: str, *, config: Any = None, image: Optional[str] = None,
                 spec: Optional[Mapping[str, Any]] = None, base_dir: Optional[str] = None, ssh_password: Any = None,
                 tags: Optional[Mapping[str, str]] = None, delete_artifact: bool = False,
                 builder: Optional[str] = None, opts: Optional[pulumi.ResourceOptions] = None) -> None:
        """`config` (a pim.yaml) and `image` (a name in it, default: resource_name), or `spec`: one
        image's mapping as under `images.<name>` in pim.yaml, its files relative to `base_dir`
        (default: the program's folder). `ssh_password` overrides ssh.password and is kept a secret.
        `delete_artifact`: remove the build from PIM's cache when the resource is deleted.
        `builder`: build on this builder (a name under builders:, or local) instead of where
        routing sends it; it changes nothing about the image, so changing it rebuilds nothing."""
        if (config is None) == (spec is None):
            raise TypeError("pim.Image: give config= (a pim.yaml) or spec= (an inline image spec), not both")
        self._pim_config = _absolute(config)
        props: dict[str, Any] = {
            "config": self._pim_config,
            "spec": dict(spec) if isinstance(spec, Mapping) else spec,
            "base_dir": _absolute(base_dir or os.getcwd()) if spec is not None else None,
            "image": image or resource_name,
            "ssh_password": pulumi.Output.secret(ssh_password) if ssh_password is not None else None,
            "tags": dict(tags or {}),
            "delete_artifact": delete_artifact,
            "builder": builder,
            "timeouts": timeouts_of(opts),
            **dict.fromkeys(IMAGE_OUTPUTS),
        }
        secret_opts = pulumi.ResourceOptions(additional_secret_outputs=["ssh_password"])
        super().__init__(ImageProvider(), resource_name, props, pulumi.ResourceOptions.merge(opts, secret_opts))


class Deployment(Resource, module="pim", name="Deployment"):
    """A pim.Image deployed to a target. Outputs: type, target_name; Proxmox: vmid and node (the
    template on the first of the target's nodes), vmids ({node: vmid}, one template per node), volume; AWS: ami_id and snapshot_id (home region), ami_ids and snapshot_ids (per region),
    regions ({region: {ami, snapshot}})."""

    type: pulumi.Output[str]
    target_name: pulumi.Output[str]
    vmid: pulumi.Output[int]
    vmids: pulumi.Output[dict]
    node: pulumi.Output[str]
    volume: pulumi.Output[str]
    regions: pulumi.Output[dict]
    ami_id: pulumi.Output[str]
    snapshot_id: pulumi.Output[str]
    ami_ids: pulumi.Output[dict]
    snapshot_ids: pulumi.Output[dict]
    image_key: pulumi.Output[str]

    def __init__(self, resource_name: str, *, image: Image, target: Any, config: Any = None,
                 base_dir: Optional[str] = None, tags: Optional[Mapping[str, str]] = None,
                 opts: Optional[pulumi.ResourceOptions] = None) -> None:
        """`target`: a target's name in a pim.yaml (`config`, default: the image's config) or a
        target mapping as under `targets.<name>` (relative files from `base_dir`, default: the
        program's folder). `tags`: extra tags (AWS: on AMIs and snapshots; Proxmox: `key-value`
        labels on the template); changing them updates in place."""
        if not isinstance(image, Image):
            raise TypeError(f"pim.Deployment: image must be a pim.Image (got {type(image).__name__})")
        if isinstance(target, str) and config is None:
            config = image._pim_config
        if isinstance(target, Mapping):
            target = dict(target)
            if target.get("token_secret") is not None:
                target = pulumi.Output.secret(target)
        props: dict[str, Any] = {
            "image_name": image.image,
            "image_key": image.content_key,
            "manifest_path": image.manifest_path,
            "image_sha256": image.sha256,
            "target": target,
            "config": _absolute(config),
            "base_dir": _absolute(base_dir or os.getcwd()),
            "tags": dict(tags or {}),
            "timeouts": timeouts_of(opts),
            **dict.fromkeys(DEPLOYMENT_OUTPUTS),
        }
        super().__init__(DeploymentProvider(), resource_name, props, opts)
