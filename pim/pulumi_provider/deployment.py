"""DeploymentProvider: a build deployed as a Proxmox template or AWS AMIs.

Identity is (the build's content key, where it lives). A new key replaces the
deployment, creating the new one before deleting the old (they are different
templates or AMIs). A change of where or how it is made with the same key (node,
storage, region, volume type...) replaces it deleting first: the engine finds
deployments by key, so the old and the new one would otherwise be the same
template or AMI. Tags and copy_to regions update in place; fields that only say
how to reach the target (timeouts, TLS, retries) change nothing. Read checks that
the template or every AMI still exists; Delete removes them and their snapshots.

The Proxmox API token secret comes from the stack config secret
`pim:proxmoxTokenSecret` (Pulumi hands Delete and Read only the stored outputs,
which never hold a secret), else from the target's token_secret_env/file.
"""

from __future__ import annotations

from typing import Any

from pulumi.dynamic import (CheckFailure, CheckResult, ConfigureRequest, CreateResult, DiffResult, ReadResult,
                            ResourceProvider, UpdateResult)

from pim.engine.deploy.spec import ProxmoxTarget
from pim.engine.errors import PimError, SpecError
from pim.pulumi_provider import worker
from pim.pulumi_provider.image import PROVIDER_KEY, timeout
from pim.pulumi_provider.inputs import (DEPLOYMENT_KEY_INPUTS, DEPLOYMENT_OUTPUTS, TOKEN_CONFIG_KEY, pve_tag_failures,
                                        tag_failures, target_changes, target_failures, target_from_state, target_spec,
                                        target_view, unknown_keys)

ECHOED = ("image_name", "image_key", "manifest_path", "image_sha256", "config", "base_dir", "tags", "timeouts")


def _inputs(props: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in props.items() if k not in DEPLOYMENT_OUTPUTS and k != PROVIDER_KEY}


def _echo(props: dict[str, Any]) -> dict[str, Any]:
    out = {k: props.get(k) for k in ECHOED}
    out["tags"] = dict(out["tags"] or {})
    return out


def _id(outs: dict[str, Any]) -> str:
    return str(outs["ami_id"]) if outs["type"] == "aws" else f"{outs['node']}/{outs['vmid']}"


class DeploymentProvider(ResourceProvider):
    serialize_as_secret_always = False

    def configure(self, req: ConfigureRequest) -> None:
        self._token = req.config.get(TOKEN_CONFIG_KEY)

    @property
    def token(self) -> str | None:
        return getattr(self, "_token", None) or None

    def _secrets(self) -> list[str]:
        return [self.token] if self.token else []

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        inputs = _inputs(news)
        failures = tag_failures(inputs.get("tags"))
        if not unknown_keys(inputs, ("target", "config", "base_dir", "tags")):
            try:
                target, _, _ = target_spec(inputs)
                if isinstance(target, ProxmoxTarget):
                    failures += pve_tag_failures(inputs.get("tags") or {})
            except SpecError as e:
                failures += target_failures(e)
            except PimError as e:
                failures.append(("target", str(e)))
        return CheckResult(inputs, [CheckFailure(prop, reason) for prop, reason in failures])

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        unknown = unknown_keys(news, DEPLOYMENT_KEY_INPUTS)
        if "image_key" in unknown or news.get("image_key") != olds.get("image_key"):
            return DiffResult(changes=True, replaces=["image_key"], delete_before_replace=False)
        if unknown:  # same build, target not known yet: if it is replaced, the old one must go first
            return DiffResult(changes=True, replaces=unknown, delete_before_replace=True)
        target, _, _ = target_spec(news)
        replace, in_place = target_changes(olds.get("target_view") or {}, target_view(target))
        if replace:
            return DiffResult(changes=True, replaces=["target"], delete_before_replace=True)
        tags_changed = _echo(olds)["tags"] != _echo(news)["tags"]
        return DiffResult(changes=bool(in_place) or tags_changed, replaces=[])

    def create(self, props: dict[str, Any]) -> CreateResult:
        inputs = _inputs(props)
        outs = self._run("deploy", inputs, "create") | _echo(inputs)
        if outs.pop("created", True) is False:
            worker.pulumi_log("info", f"pim.Deployment {inputs.get('image_name')}: already deployed ({_id(outs)})")
        return CreateResult(_id(outs), outs)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        inputs = _inputs(news)
        outs = self._run("update", {**inputs, "old": {k: olds.get(k) for k in ("ami_ids", "target_view")}},
                         "update")
        return UpdateResult(outs | _echo(inputs))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        from pim.engine.deploy import exists
        from pim.engine.deploy.model import BuiltImage
        from pim.engine.events import Emitter
        from pim.pulumi_provider.ops import deployment_outputs

        target, name, base = target_from_state(props, self.token)
        image = BuiltImage(props["image_name"], props["image_key"], None, props.get("image_sha256") or "")
        found = exists(target, image, Emitter(), target_name=name, base_dir=base)
        if found is None:
            worker.pulumi_log("warning", f"pim.Deployment {props['image_name']}: {id_} is gone or broken on "
                                         f"{name}; the next `pulumi up` deploys it again")
            return ReadResult("", {})
        outs = deployment_outputs(found, target, name, base) | _echo(props)
        return ReadResult(_id(outs), outs)

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        job = {"state": {k: props.get(k) for k in ("target_view", "target_name", "target_base_dir")},
               "image_name": props["image_name"], "image_key": props["image_key"],
               "image_sha256": props.get("image_sha256"), "token_secret": self.token}
        worker.run("delete", job, label=f"pim.Deployment {props['image_name']} ({id_})",
                   timeout=timeout(props, "delete"), secrets=self._secrets())

    def _run(self, op: str, inputs: dict[str, Any], phase: str) -> dict[str, Any]:
        job = {**inputs, "token_secret": self.token}
        return worker.run(op, job, label=f"pim.Deployment {inputs.get('image_name')}",
                          timeout=timeout(inputs, phase), secrets=self._secrets())
