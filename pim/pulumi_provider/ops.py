"""The work behind Create, Update and Delete: engine calls only, no Pulumi.

Each op takes the job (plain JSON from the provider, secrets included, never logged)
and an Emitter, and returns the JSON-able outputs. worker.py runs them in a child
process; the outputs helpers are also used in the provider process for fast reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from pim.engine.pipeline.build import image_outputs
from pim.engine.deploy.model import BuiltImage, DeployError, DeployResult
from pim.engine.deploy.spec import AwsTarget, ProxmoxTarget, TargetSpec
from pim.engine.errors import InputError
from pim.engine.events import Emitter
from pim.engine.store import manifest as manifests
from pim.engine.store.manifest import ManifestError
from pim.pulumi_provider.inputs import (DEPLOYMENT_OUTPUTS, image_config, open_store, pve_tags, target_from_state, target_spec,
                                        target_view)

# ---------------------------------------------------------------- pim.Image


def build(job: dict[str, Any], events: Emitter) -> dict[str, Any]:
    from pim.engine import builders
    from pim.engine.remote import open_remote

    cfg, name = image_config(job)
    password = cfg.images[name].ssh.password
    if password is not None:
        events.add_secret(password.get_secret_value())
    from pim.engine.pipeline.build import current_inputs

    store = open_store()
    result = builders.build(cfg, name, events, store=store, builders=builders.load(cfg),
                            remote=open_remote(cfg), override=job.get("builder"), fetch=True)
    # The inputs named as this config names them (the object may have been built under other file names).
    return image_outputs(result.manifest_path) | {"cached": result.cached, "built_on": result.builder,
                                                  "input_digests": current_inputs(cfg, name, store)[1]}


# ---------------------------------------------------------------- pim.Deployment

def built_image(job: dict[str, Any], required: bool = True) -> BuiltImage:
    """The build a Deployment deploys, from the Image's manifest; without it (only
    acceptable when nothing needs uploading) just its name, key and checksum."""
    name, key = job["image_name"], job["image_key"]
    path = Path(job.get("manifest_path") or "/nonexistent")
    try:
        manifest = manifests.read(path.parent)
    except ManifestError:
        if required:
            raise InputError(f"the build of image {name!r} (key {key[:16]}) is not in PIM's cache any more "
                             f"({path}): `pulumi refresh` notices it and the next `pulumi up` rebuilds it") from None
        return BuiltImage(name, key, None, job.get("image_sha256") or "")
    image = BuiltImage.from_manifest(manifest, path.parent / "disk.qcow2")
    if image.key != key:
        raise InputError(f"{path} is the build with key {image.key[:16]}, not {key[:16]}")
    return image


def deployment_outputs(result: DeployResult, target: TargetSpec, name: str, base: Path) -> dict[str, Any]:
    out: dict[str, Any] = dict.fromkeys(DEPLOYMENT_OUTPUTS)
    out.update(type=result.type, target_name=name, target_view=target_view(target), target_base_dir=str(base))
    ids = result.ids(getattr(target, "region", None))
    if isinstance(target, ProxmoxTarget):
        out.update(ids, volume=result.resources.get("volume") or "")
    else:
        out.update(ids, regions=result.resources["regions"])
    return out


def deploy(job: dict[str, Any], events: Emitter) -> dict[str, Any]:
    from pim.engine.deploy import deploy as engine_deploy

    target, name, base = target_spec(job, job.get("token_secret"))
    result = engine_deploy(target, built_image(job), events, target_name=name, base_dir=base)
    if isinstance(target, ProxmoxTarget) and job.get("tags"):
        retag_proxmox(target, job["image_name"], job["image_key"], job["tags"], events, base)
    return deployment_outputs(result, target, name, base) | {"created": result.created}


def update(job: dict[str, Any], events: Emitter) -> dict[str, Any]:
    """In place: copy to regions added to copy_to, remove from regions dropped; make the
    template on Proxmox nodes added to `nodes`, remove it from nodes dropped; retag."""
    from pim.engine.deploy import delete as engine_delete
    from pim.engine.deploy import deploy as engine_deploy

    target, name, base = target_spec(job, job.get("token_secret"))
    old = job.get("old") or {}
    if isinstance(target, AwsTarget):
        for region in sorted(set((old.get("ami_ids") or {})) - set(target.regions)):
            events.log("deploy", f"{region} left copy_to: removing this build's AMI there")
            engine_delete(target.model_copy(update={"region": region, "copy_to": []}),
                          BuiltImage(job["image_name"], job["image_key"], None), events)
    else:
        view = old.get("target_view") or {}
        dropped = [n for n in (view.get("nodes") or [view.get("node")]) if n and n not in target.nodes]
        if dropped:
            events.log("deploy", f"{', '.join(dropped)} left nodes: removing this build's template there")
            from pim.engine.deploy.proxmox.backend import delete_on

            delete_on(target, dropped, BuiltImage(job["image_name"], job["image_key"], None,
                                                  job.get("image_sha256") or ""), events, base)
    image = built_image(job, required=False)
    result = engine_deploy(target, image, events, target_name=name, base_dir=base)
    if isinstance(target, AwsTarget):
        old_tags = (old.get("target_view") or {}).get("tags") or {}
        retag_aws(target, image, old_tags, target.tags, events)
    else:
        retag_proxmox(target, job["image_name"], job["image_key"], job.get("tags") or {}, events, base)
    return deployment_outputs(result, target, name, base)


def delete(job: dict[str, Any], events: Emitter) -> dict[str, Any]:
    """Remove the template or the AMIs and snapshots; what is already gone is fine."""
    from pim.engine.deploy import delete as engine_delete

    target, _, base = target_from_state(job["state"], job.get("token_secret"))
    image = BuiltImage(job["image_name"], job["image_key"], None, job.get("image_sha256") or "")
    return {"removed": engine_delete(target, image, events, base_dir=base)}


def retag_aws(target: AwsTarget, image: BuiltImage, old: dict[str, str], new: dict[str, str], events: Emitter) -> None:
    from pim.engine.deploy.aws import amis as aws

    clients = aws.Clients(target)
    gone = sorted(set(old) - set(new))
    for region in target.regions:
        ec2 = clients.get("ec2", region)
        for img in aws.find_images(ec2, image):
            ids = [img["ImageId"], *aws.snapshots_of(img)]
            if gone:
                ec2.delete_tags(Resources=ids, Tags=[{"Key": k} for k in gone])
            if new:
                ec2.create_tags(Resources=ids, Tags=aws.tag_list(new))
            events.log("deploy", f"tags of {', '.join(ids)} set")


def retag_proxmox(target: ProxmoxTarget, name: str, key: str, tags: dict[str, str], events: Emitter,
                  base: Path) -> None:
    from pim.engine.deploy.proxmox import backend as proxmox

    found = proxmox.exists(target, BuiltImage(name, key, None), events, base_dir=base)
    if found is None:
        raise DeployError(f"the template of {name} (key {key[:16]}) is gone: `pulumi refresh`, then `pulumi up`")
    value = ";".join(["pim", proxmox.key_tag(key), *pve_tags(tags)])
    pve = proxmox.Pve(target, events, base)
    for node, vmid in found.ids()["vmids"].items():
        on = pve.on(node)
        on.wait(on.call(f"set tags of VM {vmid}", lambda: on.node.qemu(vmid).config.post(tags=value)),
                f"set tags of VM {vmid}")
        events.log("deploy", f"tags of template {vmid} on {node}: {value}")


OPS: dict[str, Callable[[dict[str, Any], Emitter], dict[str, Any]]] = {
    "build": build, "deploy": deploy, "update": update, "delete": delete,
}
