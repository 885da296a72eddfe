"""Rules of the real EC2 API that moto does not keep, each with its source.

Client side (`client_token_rule`): the `aws` fixture adds it to every EC2 client the
engine creates (`Clients.get`). Server side (`install_server_rules`): moto's EC2
handlers made to keep the rules below; importing this module installs them once per
process (the `aws` fixture imports it), so every AWS test, and every client of the
session's moto server, runs under them.
"""

from __future__ import annotations

import threading
from typing import Any

# EC2 API Reference, "Ensuring idempotency in Amazon EC2 API requests": a request repeated
# with the same client token returns the result of the first one, without doing anything
# again, whatever has become of that result since (a copied AMI that was deregistered is
# still the answer). Tokens are per account and region.
_TOKENS: dict[tuple[str, str, str], dict[str, Any]] = {}
_LOCK = threading.Lock()
IDEMPOTENT = ("CopyImage",)


def client_token_rule(client: Any) -> None:
    """Make `client` answer a repeated ClientToken of an IDEMPOTENT operation with the
    first result, as EC2 does."""
    region = client.meta.region_name

    def before(params: dict[str, Any], model: Any, **_: Any) -> Any:
        token = (params.get("body") or {}).get("ClientToken") if isinstance(params.get("body"), dict) else None
        if model.name not in IDEMPOTENT or not token:
            return None
        with _LOCK:
            first = _TOKENS.get((region, model.name, token))
        return (_Http(), dict(first)) if first is not None else None

    def after(parsed: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        token = context.get("pim_client_token")
        if token and "Error" not in parsed:
            with _LOCK:
                _TOKENS.setdefault((region, model.name, token), dict(parsed))

    def remember(params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        if model.name in IDEMPOTENT:
            context["pim_client_token"] = params.get("ClientToken")

    client.meta.events.register("provide-client-params.ec2.*", remember)
    client.meta.events.register("before-call.ec2.*", before)
    client.meta.events.register("after-call.ec2.*", after)


class _Http:
    """The HTTP response botocore expects beside a short-circuited result."""

    status_code = 200
    headers: dict[str, str] = {}
    content = b""


# ---------------------------------------------------------------- server side

# EC2 API Reference, RegisterImage and CopyImage, "Name": an AMI name is unique per
# account and region; "Error codes" (errors-overview.html): InvalidAMIName.Duplicate,
# "The specified AMI name is already in use by another AMI."
#   https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_RegisterImage.html
#   https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html
# RegisterImage, "TagSpecifications": "To tag the AMI, the value for ResourceType must be
# image. If you specify another value for ResourceType, the request fails." (the error
# code of that refusal is not documented: InvalidParameterValue here).
# CopyImage, "TagSpecifications": ResourceType image tags the new AMI, snapshot tags
# its new snapshots; any other value fails.
#   https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CopyImage.html
# RegisterImage, "BlockDeviceMappings" / "RootDeviceName": the AMI is the snapshot it was
# given (DescribeImages shows that snapshot at the root device), and that snapshot cannot
# be deleted while the AMI is registered: InvalidSnapshot.InUse (errors-overview.html).
# moto 5.2 ignores all of these: every registered AMI gets a fresh snapshot of its own,
# TagSpecifications are dropped and names may repeat.

def install_server_rules() -> None:
    """Make moto's RegisterImage and CopyImage keep the rules above (idempotent)."""
    from moto.core.responses import ActionResult
    from moto.ec2.exceptions import EC2ClientError
    from moto.ec2.responses.amis import AmisResponse

    if getattr(AmisResponse, "_pim_rules", False):
        return

    def refuse_duplicate_name(backend: Any, name: str | None) -> None:
        for ami in list(backend.amis.values()):
            if name and ami.name == name and ami.owner_id == backend.account_id:
                raise EC2ClientError("InvalidAMIName.Duplicate", f"AMI name {name} is already in use by AMI {ami.id}")

    def tag_specs(specs: list[dict[str, Any]], allowed: set[str]) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for spec in specs:
            kind = spec.get("ResourceType")
            if kind not in allowed:
                raise EC2ClientError("InvalidParameterValue", f"Value {kind} is invalid for parameter ResourceType.")
            out.setdefault(kind, {}).update({t["Key"]: t["Value"] for t in spec.get("Tags", [])})
        return out

    def register_image(self: Any) -> ActionResult:
        backend, name = self.ec2_backend, self._get_param("Name")
        self.error_on_dryrun()
        tags = tag_specs(self._get_param("TagSpecifications", []), {"image"})
        root = self._get_param("RootDeviceName")
        mapped = [m for m in self._get_param("BlockDeviceMappings", []) if m.get("DeviceName") == root]
        snap = backend.get_snapshot(mapped[0]["Ebs"]["SnapshotId"]) if mapped and mapped[0].get("Ebs") else None
        refuse_duplicate_name(backend, name)
        ami = backend.register_image(name, self._get_param("Description", ""))
        if snap is not None:  # the AMI is the snapshot it was given, not one of moto's own
            own, own.from_ami = ami.ebs_snapshot, None
            backend.delete_snapshot(own.id)
            ami.ebs_snapshot, snap.from_ami, ami.root_device_name = snap, ami.id, root
        if tags.get("image"):
            backend.create_tags([ami.id], tags["image"])
        return ActionResult({"ImageId": ami.id})

    def copy_image(self: Any) -> ActionResult:
        backend, name = self.ec2_backend, self._get_param("Name")
        self.error_on_dryrun()
        tags = tag_specs(self._get_param("TagSpecifications", []), {"image", "snapshot"})
        refuse_duplicate_name(backend, name)
        ami = backend.copy_image(self._get_param("SourceImageId"), self._get_param("SourceRegion"), name,
                                 self._get_param("Description"))
        if tags.get("image"):
            backend.create_tags([ami.id], tags["image"])
        if tags.get("snapshot"):
            backend.create_tags([ami.ebs_snapshot.id], tags["snapshot"])
        return ActionResult({"ImageId": ami.id})

    AmisResponse.register_image = register_image  # type: ignore[method-assign]
    AmisResponse.copy_image = copy_image  # type: ignore[method-assign]
    AmisResponse._pim_rules = True  # type: ignore[attr-defined]


install_server_rules()
