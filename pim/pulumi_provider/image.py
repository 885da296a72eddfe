"""ImageProvider: a PIM build as a Pulumi resource.

Identity is the build's content key (the final stage key: every input and every
file they reference, hashed). Diff recomputes it from the new inputs without
building and replaces only when it changed; tags update in place; preview never
builds (the engine calls Create only on `up`). Create builds in a worker (a cache
hit answers in about a second); Read checks that the artifact is still in PIM's
cache and drops the resource from the state when it is not, so the next `up`
builds it again; Delete keeps the cached artifact unless `delete_artifact` is set.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pulumi.dynamic import (CheckFailure, CheckResult, CreateResult, DiffResult, ReadResult, ResourceProvider,
                            UpdateResult)

from pim.engine.errors import PimError, SpecError
from pim.pulumi_provider import worker
from pim.pulumi_provider.inputs import (IMAGE_KEY_INPUTS, IMAGE_OUTPUTS, image_config, open_store, image_failures, tag_failures,
                                        unknown_keys)

PROVIDER_KEY = "__provider"
ECHOED = ("image", "config", "base_dir", "tags", "delete_artifact", "builder")  # inputs kept in outputs (diff sees outputs)


def _inputs(props: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in props.items() if k not in IMAGE_OUTPUTS and k != PROVIDER_KEY}


def _echo(props: dict[str, Any]) -> dict[str, Any]:
    out = {k: props.get(k) for k in ECHOED}
    out["tags"] = dict(out["tags"] or {})
    out["delete_artifact"] = bool(out["delete_artifact"])
    return out


def timeout(props: dict[str, Any], op: str) -> float | None:
    value = (props.get("timeouts") or {}).get(op)
    return float(value) if value else None


def _changed_inputs(olds: dict[str, Any], digests: dict[str, str], store: Any, name: str) -> list[str]:
    """The property paths (`input_digests["<input>"]`) of the inputs that changed since
    the build in the state, said in the engine log too; none when it recorded none."""
    from pim.engine.pipeline.explain import recorded_inputs, reasons

    recorded = olds.get("input_digests") or recorded_inputs(store, str(olds.get("content_key") or ""))
    if not recorded:
        return []
    why = reasons(dict(recorded), digests)
    if why:
        worker.pulumi_log("info", f"pim.Image {name}: rebuild: {'; '.join(why)}")
    changed = [n for n in dict.fromkeys([*digests, *recorded]) if recorded.get(n) != digests.get(n)]
    return ["input_digests[" + json.dumps(n) + "]" for n in changed]  # a property path, quotes escaped


class ImageProvider(ResourceProvider):
    # Nothing secret is captured in the pickled provider: keep it readable in the state.
    serialize_as_secret_always = False

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        inputs = _inputs(news)
        failures = tag_failures(inputs.get("tags"))
        if not unknown_keys(inputs, IMAGE_KEY_INPUTS):
            try:
                image_config(inputs)
            except SpecError as e:
                failures += image_failures(e, inputs)
            except PimError as e:
                failures.append(("spec" if inputs.get("spec") is not None else "config", str(e)))
        return CheckResult(inputs, [CheckFailure(prop, reason) for prop, reason in failures])

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        unknown = unknown_keys(news, IMAGE_KEY_INPUTS)
        if unknown:  # a preview with inputs from resources not made yet
            return DiffResult(changes=True, replaces=unknown)
        from pim.engine.pipeline.build import current_inputs

        cfg, name = image_config(news)
        store = open_store()
        keys, digests = current_inputs(cfg, name, store)
        if keys.final != olds.get("content_key"):
            # A new key is a new store object: creating it before deleting the old one is safe.
            return DiffResult(changes=True, replaces=["content_key", *_changed_inputs(olds, digests, store, name)],
                              delete_before_replace=False)
        old, new = _echo(olds), _echo(news)
        changed = [k for k in ("tags", "delete_artifact") if old[k] != new[k]]
        return DiffResult(changes=bool(changed), replaces=[])

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = self._build(_inputs(props), "create")
        return CreateResult(outs["content_key"], outs)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        """Only tags or delete_artifact changed (anything else is a new key: a replace)."""
        from pim.engine.pipeline.build import lookup

        inputs = _inputs(news)
        cfg, name = image_config(inputs)
        found = lookup(cfg, name, open_store())
        if found is None:  # the artifact went missing meanwhile: build it again
            return UpdateResult(self._build(inputs, "update"))
        from pim.engine.pipeline.build import image_outputs

        return UpdateResult(image_outputs(found.manifest_path) | _echo(inputs) | {"built_on": olds.get("built_on")})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        from pim.engine.pipeline.build import image_outputs

        key = props.get("content_key") or id_
        store = open_store()
        obj = store.object(key) if len(key or "") == 64 else None
        if obj is None or not store.has(key) or not (obj / "manifest.json").is_file():
            worker.pulumi_log("warning", f"pim.Image {props.get('image') or id_}: build {key[:16]} is no longer "
                                         f"in PIM's cache ({store.root}); the next `pulumi up` builds it again")
            return ReadResult("", {})
        outs = image_outputs(obj / "manifest.json")
        if not Path(outs["path"]).is_file():
            worker.pulumi_log("warning", f"pim.Image {props.get('image') or id_}: {outs['path']} is missing; "
                                         "the next `pulumi up` builds it again")
            return ReadResult("", {})
        return ReadResult(key, {**_echo(props), **outs, "built_on": props.get("built_on")})

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        label = f"pim.Image {props.get('image') or id_}"
        key = props.get("content_key") or id_
        if not props.get("delete_artifact"):
            worker.pulumi_log("info", f"{label}: build {key[:16]} kept in PIM's cache (`pim images gc` removes "
                                      "unused builds; set delete_artifact to remove it with the resource)")
            return
        from pim.engine.store import inventory
        from pim.engine.errors import InputError

        store = open_store()
        try:
            entry = inventory.find(store, key)
        except InputError:
            return  # already gone
        inventory.remove(store, entry)
        worker.pulumi_log("info", f"{label}: build {key[:16]} removed from PIM's cache")

    def _build(self, inputs: dict[str, Any], op: str) -> dict[str, Any]:
        name = inputs.get("image")
        job = {k: inputs.get(k) for k in (*IMAGE_KEY_INPUTS, "builder")}
        secrets = [str(inputs["ssh_password"])] if inputs.get("ssh_password") else []
        outs = worker.run("build", job, label=f"pim.Image {name}", timeout=timeout(inputs, op), secrets=secrets)
        if outs.pop("cached", False):
            worker.pulumi_log("info", f"pim.Image {name}: cache hit ({outs['content_key'][:16]})")
        return outs | _echo(inputs)
