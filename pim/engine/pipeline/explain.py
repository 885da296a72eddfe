"""Why a stage is (not) cached: the inputs of the image stages as a flat, named map,
and what changed against the newest build.

`input_digests` names every input the keys hash (`keys.py`), one entry each:
files by their path and content digest (`provision: scripts/hello.sh content`),
settings by their value when it is a plain scalar or by a digest otherwise
(`install: disk_size`, `provision: env`). A build records the map in its final
manifest and its provenance; `pim build --explain`, Pulumi's diff and Terraform's
plan compare the map of the current inputs with a recorded one, and `reasons` says
what changed, e.g. `provision: scripts/hello.sh content changed`, `install: ISO
sha256 changed`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Any

from pim.engine.config.spec import FileStep, ImageSpec

IMAGE_STAGES = ("install", "provision", "final")
KEYED = "hmac-sha256:"
SALT_ID = "install: keyed-hash salt id"  # which salt the keyed entries are under
_SKIP = {"stage", "install", "provision"}  # the stage's name and the key it is built on


class _Namer:
    """Names and shows inputs: paths as the user wrote them (`names` maps a builder's
    context paths back), scalars as they are, everything structured (vars, env, an
    inline script) by its HMAC-SHA256 under the store's salt: a plain digest of a
    small value (an env token) could be found by guessing."""

    def __init__(self, salt: bytes, names: dict[str, str] | None):
        self.salt, self.names = salt, names or {}

    def path(self, path: str | None) -> str:
        return self.names.get(str(path), str(path))

    def keyed(self, obj: Any) -> str:
        """`hmac-sha256:<hex>` of obj as sorted compact JSON, under the salt."""
        blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        return KEYED + hmac.new(self.salt, blob, hashlib.sha256).hexdigest()

    def value(self, obj: Any) -> str:
        if obj is None or isinstance(obj, bool):
            return str(obj).lower()
        if isinstance(obj, (int, float)):
            return str(obj)
        if isinstance(obj, str) and len(obj) <= 64 and "\n" not in obj:
            return obj
        return self.keyed(obj)


def _install(spec: ImageSpec, inputs: dict[str, Any], n: _Namer) -> dict[str, str]:
    inst, out = spec.installer, {}
    for name, value in inputs.items():
        if name in _SKIP:
            continue
        if name == "iso_sha256":
            out["install: ISO sha256"] = value
        elif name == "template":
            if value is not None:
                out[f"install: answer template {n.path(inst.template)} content"] = value
        elif name == "answer_file":
            out[f"install: answer file {n.path(inst.answer_file)} content"] = value
        elif name in ("files", "template_files"):  # by the name the installer asks for: unique
            kind = "served file" if name == "files" else "template file"
            out.update({f"install: {kind} {served} content": d for served, d in value.items()})
        elif name == "builtin":
            for template, d in (value.get("templates") or {}).items():
                out[f"install: built-in template {template} content"] = d
            if value:
                out["install: built-in boot parameters"] = n.value([value.get("boot_params"), value.get("log_params")])
        elif name == "ssh_password":
            if value is not None:
                out["install: SSH password"] = "hmac-sha256:" + value
        elif name == "version":
            out["install: stage version"] = str(value)
        else:
            out[f"install: {name}"] = n.value(value)
    return out


def _provision(spec: ImageSpec, inputs: dict[str, Any], n: _Namer) -> dict[str, str]:
    out: dict[str, str] = {}
    labels = []
    for index, (step, recorded) in enumerate(zip(spec.provision, inputs.get("steps", [])), 1):
        rest = dict(recorded)
        if isinstance(step, FileStep):
            label, content = f"provision: {n.path(step.source)}", rest.pop("source")
        elif step.script is not None:
            label, content = f"provision: {n.path(step.script)}", rest.pop("script")
        else:
            label, content = f"provision: step {index} ({step.label}) inline script", n.keyed(rest.pop("inline"))
        if f"{label} content" in out:  # the same file in two steps
            label = f"{label} (step {index})"
        labels.append(label.removeprefix("provision: "))
        out[f"{label} content"] = content
        out[f"{label} settings"] = n.value(rest)
    out["provision: step order"] = n.value(labels)
    for name, value in inputs.items():
        if name in _SKIP or name == "steps":
            continue
        if name == "guest_files":
            out.update({f"provision: PIM's {g} script content": d for g, d in value.items()})
        elif name == "version":
            out["provision: stage version"] = str(value)
        else:
            out[f"provision: {name}"] = n.value(value)
    return out


def _final(inputs: dict[str, Any], n: _Namer) -> dict[str, str]:
    out = {}
    for name, value in inputs.items():
        if name in _SKIP:
            continue
        out["final: stage version" if name == "version" else f"final: {name}"] = \
            str(value) if name == "version" else n.value(value)
    return out


def input_digests(spec: ImageSpec, inputs: dict[str, dict[str, Any]], salt: bytes,
                  names: dict[str, str] | None = None) -> dict[str, str]:
    """{name: digest or value} of every input of the image stages, from `StageKeys.inputs`.

    Names start with their stage (`install: `, `provision: `, `final: `) and use file
    paths as the config wrote them (`names`: {path in `spec`: as written}, for a
    builder's renamed context). Values: sha256 hex for file content, the value itself
    for short scalars, `hmac-sha256:<hex>` under `salt` (the store's, `keys.store_salt`)
    for anything structured; none of them reveals a secret.
    """
    n = _Namer(salt, names)
    return {**_install(spec, inputs["install"], n), **_provision(spec, inputs["provision"], n),
            **_final(inputs["final"], n), SALT_ID: n.keyed("salt id")[len(KEYED):][:16]}


def reasons(old: dict[str, str], new: dict[str, str], stage: str | None = None) -> list[str]:
    """What differs between two input maps (of `stage` only, when given), in the map's
    order: `<name> changed`, `<name> added`, `<name> removed`. Maps recorded under
    another salt (another machine's store) cannot compare their keyed entries: those
    are left out, and the last reason says so."""
    other_salt = SALT_ID in old and old.get(SALT_ID) != new.get(SALT_ID)
    out, skipped = [], False
    for name in [*new, *(n for n in old if n not in new)]:
        if name == SALT_ID or (stage is not None and not name.startswith(f"{stage}: ")):
            continue
        if other_salt and (old.get(name, "").startswith(KEYED) or new.get(name, "").startswith(KEYED)):
            skipped = skipped or old.get(name) != new.get(name)
            continue
        if name not in old:
            out.append(f"{name} added")
        elif name not in new:
            out.append(f"{name} removed")
        elif old[name] != new[name]:
            out.append(f"{name} changed")
    if skipped:
        out.append("settings kept as keyed hashes were recorded under another store's salt and are not compared")
    return out


@dataclass(frozen=True)
class StageExplanation:
    """One image stage of `explain`: its key, whether the store holds it, whether the
    build needs it (not when a later stage is cached), and if it is to be built, why."""

    stage: str
    key: str
    cached: bool
    needed: bool = True
    reasons: list[str] = field(default_factory=list)

    @property
    def to_build(self) -> bool:
        return self.needed and not self.cached

    def line(self) -> str:
        state = "cached" if self.cached else "to build" if self.needed else "not needed (a later stage is cached)"
        why = f": {'; '.join(self.reasons)}" if self.reasons else ""
        return f"{self.stage:<10} {self.key[:12]}  {state}{why}"


def explain(stage_keys: dict[str, str], current: dict[str, str], recorded: dict[str, str] | None,
            cached: dict[str, bool], newest: str | None = None) -> list[StageExplanation]:
    """Per image stage, in pipeline order: cached or not, needed or not (as the build
    loop decides: walking back from final, a cached stage needs nothing before it),
    and for a stage to build, the inputs that changed against `recorded` (the newest
    build's map; None when there is none, or it was built before PIM recorded one).
    `newest` is that build's key.
    """
    needed, want = {}, True
    for stage in reversed(IMAGE_STAGES):
        needed[stage], want = want, want and not cached[stage]
    out: list[StageExplanation] = []
    earlier_changed: str | None = None
    for stage in IMAGE_STAGES:
        key = stage_keys[stage]
        if cached[stage] or not needed[stage]:
            out.append(StageExplanation(stage, key, cached[stage], needed[stage]))
            continue
        if recorded is None:
            why = ["no earlier build of this image to compare with" if newest is None
                   else f"the newest build ({newest[:12]}) recorded no inputs (built by an older PIM)"]
        else:
            why = reasons(recorded, current, stage)
        if earlier_changed:
            why.append(f"built on a new {earlier_changed} stage")
        if not why:
            why = ["inputs as in the newest build, but its object is no longer in the store"]
        out.append(StageExplanation(stage, key, False, True, why))
        earlier_changed = stage
    return out


def recorded_inputs(store: Any, key: str) -> dict[str, str] | None:
    """The input map recorded by the build whose final key is `key`, or None (gone, or
    built before PIM recorded one)."""
    from pim.engine.store.manifest import ManifestError

    if not store.has(key):
        return None
    try:
        return store.manifest(key).input_digests or None
    except ManifestError:
        return None
