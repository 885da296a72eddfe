"""Deploy a built image to a target: one interface for every target type.

    deploy(target, image, events) -> DeployResult   idempotent: a second call creates nothing
    exists(target, image, events) -> DeployResult | None   read/refresh: None means drift
    delete(target, image, events) -> list[str]      what was removed; already gone is success

`target` is a TargetSpec from pim.yaml (pim.engine.deploy.spec), `image` a
BuiltImage (the newest build from the store, or just a name and key to delete).
One package per target type (aws/, proxmox/), each with a `backend` module holding
its deploy / exists / delete; model.py and spec.py are what they share. Cloud SDKs
(boto3, proxmoxer) are imported only when a target of that type is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pim.engine.deploy.model import BuiltImage, DeployError, DeployResult
from pim.engine.deploy.spec import AwsTarget, ProxmoxTarget, TargetSpec
from pim.engine.events import Emitter

__all__ = ["BuiltImage", "DeployError", "DeployResult", "TargetSpec", "deploy", "exists", "delete"]


def _backend(target: Any) -> Any:
    if isinstance(target, AwsTarget):
        from pim.engine.deploy.aws import backend as aws

        return aws
    if isinstance(target, ProxmoxTarget):
        from pim.engine.deploy.proxmox import backend as proxmox

        return proxmox
    raise TypeError(f"not a deploy target: {target!r}")


def deploy(target: TargetSpec, image: BuiltImage, events: Emitter, *, target_name: str = "",
           base_dir: Path | None = None) -> DeployResult:
    """Create (or find) the deployment of this build on the target; idempotent.

    Proxmox: a template VM with the disk imported (its VMID and node in the result);
    AWS: an AMI and its snapshot in the target's region and each copy region. The
    deployment is found again by the build's key (`image.key`), so a second call
    sends nothing (`DeployResult.created` False). Raises InputError for a bad target
    or a missing credential, DeployError when the remote side fails (whatever was
    created is removed again).
    """
    events.emit("stage-begin", "deploy", f"{image.name} -> {target_name or target.type}", key=image.key)
    result = _backend(target).deploy(target, image, events, target_name, **_extra(target, base_dir))
    events.emit("stage-end", "deploy", "created" if result.created else "already there", cached=not result.created)
    return result


def exists(target: TargetSpec, image: BuiltImage, events: Emitter, *, target_name: str = "",
           base_dir: Path | None = None) -> DeployResult | None:
    """The deployment of this build on the target, or None when it is not there (or
    no longer complete); never creates anything. Raises as `deploy` does."""
    return _backend(target).exists(target, image, events, target_name, **_extra(target, base_dir))


def delete(target: TargetSpec, image: BuiltImage, events: Emitter, *, base_dir: Path | None = None) -> list[str]:
    """Remove the deployment of this build (template, or AMIs and their snapshots in
    every region); returns the ids removed, [] when nothing was there."""
    return _backend(target).delete(target, image, events, **_extra(target, base_dir))


def _extra(target: Any, base_dir: Path | None) -> dict[str, Any]:
    # Relative secret and CA files in a Proxmox target are read from the config's folder.
    return {"base_dir": base_dir} if isinstance(target, ProxmoxTarget) else {}
