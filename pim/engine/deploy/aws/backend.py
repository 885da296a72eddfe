"""The AWS target's deploy / exists / delete, as pim.engine.deploy calls them."""

from __future__ import annotations

import time

from pim.engine.deploy.aws.amis import cleanup_orphans, copy_to, deregister, find_images, register, snapshots_of, usable
from pim.engine.deploy.aws.common import Clients, failing_as
from pim.engine.deploy.model import BuiltImage, DeployResult
from pim.engine.deploy.spec import AwsTarget
from pim.engine.errors import InputError
from pim.engine.events import Emitter


def deploy(target: AwsTarget, image: BuiltImage, events: Emitter, target_name: str = "",
           clients: Clients | None = None) -> DeployResult:
    """This build as an AMI in target.region and every copy_to region; creates only what is missing.

    resources: {"regions": {region: {"ami": id, "snapshot": id}}}. Raises InputError
    when the build is not on disk and must be uploaded, DeployError when AWS fails
    (after the retries docs/retries.md lists; a botocore error no step names is
    wrapped here).
    """
    clients = clients or Clients(target)
    with failing_as(f"AWS deploy to {target.region}"):
        return _deploy(clients, target, image, events, target_name)


def _deploy(clients: Clients, target: AwsTarget, image: BuiltImage, events: Emitter, target_name: str) -> DeployResult:
    regions: dict[str, dict[str, str]] = {}
    created, stats = False, {}
    ec2 = clients.get("ec2", target.region)
    home = usable(ec2, image, target, events, target.region)
    if home is None:
        if image.path is None:
            raise InputError(f"no build of {image.name} with key {image.key[:16]} to upload")
        cleanup_orphans(ec2, image.key, keep=set())
        t0 = time.monotonic()
        if target.method == "import":
            from pim.engine.deploy.aws.s3import import upload_import

            sid, stats = upload_import(clients, target, image, events)
        else:
            from pim.engine.deploy.aws.direct import upload_direct

            sid, stats = upload_direct(clients, target, image, events)
        stats["upload_seconds"] = round(time.monotonic() - t0, 3)
        ami = register(clients, target, image, sid, events)
        events.log("deploy", f"registered {ami} in {target.region}")
        created = True
    else:
        ami, sid = home["ImageId"], (snapshots_of(home) or [""])[0]
        events.log("deploy", f"{ami} already exists in {target.region}: nothing uploaded")
    regions[target.region] = {"ami": ami, "snapshot": sid}
    for region in target.copy_to:
        rec2 = clients.get("ec2", region)
        copy = usable(rec2, image, target, events, region)
        if copy is None:
            events.log("deploy", f"copying {ami} to {region}")
            regions[region] = dict(zip(("ami", "snapshot"), copy_to(clients, target, image, ami, region, events)))
            created = True
        else:
            regions[region] = {"ami": copy["ImageId"], "snapshot": (snapshots_of(copy) or [""])[0]}
    return DeployResult(target_name, "aws", image.name, image.key, created, {"regions": regions}, stats)


def exists(target: AwsTarget, image: BuiltImage, events: Emitter, target_name: str = "",
           clients: Clients | None = None) -> DeployResult | None:
    """The deployment if an available AMI of this build is in every region, else None (drift).

    Raises DeployError when DescribeImages fails (after botocore's retries).
    """
    clients = clients or Clients(target)
    regions = {}
    for region in target.regions:
        with failing_as(f"DescribeImages in {region}"):
            ok = [i for i in find_images(clients.get("ec2", region), image) if i.get("State") == "available"]
        if not ok:
            return None
        regions[region] = {"ami": ok[0]["ImageId"], "snapshot": (snapshots_of(ok[0]) or [""])[0]}
    return DeployResult(target_name, "aws", image.name, image.key, False, {"regions": regions})


def delete(target: AwsTarget, image: BuiltImage, events: Emitter, clients: Clients | None = None) -> list[str]:
    """Deregister every AMI of this build and delete its snapshots, in every region. Gone is fine.

    Raises DeployError naming the region when a call fails (after botocore's retries).
    """
    clients = clients or Clients(target)
    removed: list[str] = []
    for region in target.regions:
        ec2 = clients.get("ec2", region)
        with failing_as(f"AWS delete in {region}"):
            for img in find_images(ec2, image):
                removed += deregister(ec2, img)
            removed += cleanup_orphans(ec2, image.key, keep=set())
    for what in removed:
        events.log("delete", f"removed {what}")
    return removed
