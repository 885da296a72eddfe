"""The native `pim` provider for Terraform / OpenTofu: the executable `terraform-provider-pim`.

    resource    pim_image       build an image; replaced exactly when its content key changes
    resource    pim_deployment  deploy a build to a target (Proxmox template, AWS AMIs)
    data source pim_image       the cached build of an image; never builds

Paths in `config` are relative to the directory Terraform runs in. Plans compute the
content key from the config and every file it references (the same key `pim build`
uses) and build nothing; apply builds or deploys; destroy removes deployments and
keeps built images in PIM's cache (`pim images gc` reclaims them). Secrets (API
tokens, SSH passwords) stay in pim.yaml's sources (environment, files) and never
enter Terraform state.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pim.tofu.plugin import cty
from pim.tofu.plugin.base import Attr, DataSource, Diag, Diags, Plan, Provider, Resource, Schema

S, N, MAP = "string", "number", ["map", "string"]


def _in(name: str, description: str) -> Attr:
    return Attr(name, S, description, required=True)


def _out(name: str, description: str, type: Any = S) -> Attr:
    return Attr(name, type, description, computed=True)


IMAGE_OUTPUTS = (
    _out("id", "The build's content key"),
    _out("key", "Content key: sha256 over the image's inputs and every file they read"),
    _out("path", "The qcow2 in PIM's cache"),
    _out("sha256", "sha256 of the qcow2"),
    _out("size", "Size of the qcow2 in bytes", N),
    _out("format", "Disk format (qcow2)"),
    _out("arch", "Guest architecture"),
    _out("firmware", "bios or uefi"),
    _out("manifest_path", "The build's manifest (inputs, lineage, timings)"),
    _out("built_on", "Where it was built: local, or the name of the builder that built it"),
    _out("sbom_path", "The build's SBOM (CycloneDX 1.5 JSON) beside the qcow2"),
    _out("provenance_path", "The build's SLSA provenance, a DSSE envelope signed with PIM's key "
                            "(`pim images verify` checks it)"),
    _out("input_digests", "The named inputs the build hashes (files by content digest, settings by value); "
                          "a plan shows the ones that changed and says why the image is replaced", MAP),
)
IMAGE_SCHEMA = Schema((_in("config", "Path to pim.yaml, relative to the working directory"),
                       _in("image", "Image name in the config"),
                       Attr("builder", S, "Build on this builder (see `pim builders list`) instead of where routing "
                                          "sends it; changing it rebuilds nothing", optional=True),
                       *IMAGE_OUTPUTS),
                      "An image built by PIM from an installer ISO; rebuilt when its content key changes.")
DEPLOYMENT_SCHEMA = Schema((
    _in("config", "Path to pim.yaml (its `targets` section names the target)"),
    _in("image", "Image name in the config"),
    _in("target", "Target name in the config"),
    _in("image_key", "The build to deploy: pim_image.<name>.key"),
    _out("id", "<target>/<image key>"),
    _out("type", "proxmox or aws"),
    _out("vmid", "Proxmox template VMID", N),
    _out("node", "Proxmox node (the first of the target's nodes)"),
    _out("vmids", "Proxmox template VMID per node", ["map", "number"]),
    _out("ami_id", "AMI id in the target's region"),
    _out("snapshot_id", "EBS snapshot id in the target's region"),
    _out("ami_ids", "AMI id per region", MAP),
    _out("snapshot_ids", "Snapshot id per region", MAP),
), "A build of a PIM image deployed as a Proxmox template or AWS AMI(s).")


def _emitter() -> Any:
    """Engine events as lines on stderr: Terraform shows them with TF_LOG=info or more."""
    from pim.engine.events import Emitter
    from pim.engine.relay import Relay

    relay = Relay("pim", lambda level, text: print(f"[{level.upper()}] {text}", file=sys.stderr, flush=True))
    return Emitter(lambda e: relay.event(e.to_json()))


def _errors(e: Exception, attribute: str = "config", events: Any = None) -> Diags:
    """Engine errors as diagnostics: one per config problem, or the message with its log
    tail as the detail (secrets the build knows of redacted)."""
    from pim.engine.errors import SpecError

    if isinstance(e, SpecError):
        return Diags([Diag(f"{e.source}: {p}", "", attribute) for p in e.problems])
    lines = (events.redact(str(e)) if events is not None else str(e)).splitlines() or [type(e).__name__]
    return Diags([Diag(lines[0], "\n".join(lines[1:]), attribute)])


class _Config:
    """Loads pim.yaml for a resource; engine errors become Terraform diagnostics."""

    @staticmethod
    def load(values: dict[str, Any]) -> Any:
        from pim.engine.errors import PimError
        from pim.engine.config.spec import load_config

        try:
            cfg = load_config(Path(values["config"]))
            cfg.image(values["image"])
            return cfg
        except PimError as e:
            raise _errors(e) from None


def _config_exists(config: dict[str, Any]) -> None:
    """Validation runs in a provider process of its own on every plan: keep it to a stat.
    The plan loads the config and reports each problem on its attribute."""
    if _known(config, "config") and not Path(config["config"]).is_file():
        raise Diag(f"{config['config']}: cannot read the config: no such file", "", "config")


def _image_attrs(manifest_path: Path, keep: dict[str, Any] | None = None) -> dict[str, Any]:
    """The attributes a build shows; `keep`'s input_digests, when it has them, over the manifest's."""
    from pim.engine.pipeline.build import image_outputs

    out = image_outputs(manifest_path)
    if keep and isinstance(keep.get("input_digests"), dict):
        out["input_digests"] = keep["input_digests"]
    keep = ("path", "sha256", "size", "format", "arch", "firmware", "manifest_path", "sbom_path", "provenance_path",
            "input_digests")
    return {k: out[k] for k in keep} | {"id": out["content_key"], "key": out["content_key"]}


def _known(values: dict[str, Any], *names: str) -> bool:
    return all(values.get(n) is not cty.UNKNOWN and values.get(n) is not None for n in names)


def _rebuild_warning(image: str, prior: dict[str, Any], digests: dict[str, str]) -> list[Diag]:
    """A plan-time warning naming the inputs that changed since the build in the state."""
    from pim.engine.pipeline.explain import reasons, recorded_inputs

    recorded = prior.get("input_digests") or recorded_inputs(_store(), str(prior.get("key") or ""))
    if not recorded:
        return [Diag(f"pim_image {image}: its inputs changed; the build in the state recorded none to compare "
                     "with (built by an older PIM)", warning=True)]
    why = reasons(dict(recorded), digests) or ["an input PIM does not name changed (or PIM's own version)"]
    return [Diag(f"pim_image {image} is rebuilt: {why[0]}" + (f" (+{len(why) - 1} more)" if len(why) > 1 else ""),
                 "\n".join(why), "input_digests", warning=True)]


class ImageResource(Resource):
    schema = IMAGE_SCHEMA

    def validate(self, config: dict[str, Any]) -> None:
        _config_exists(config)

    def plan(self, prior: dict[str, Any] | None, proposed: dict[str, Any], config: dict[str, Any]) -> Plan:
        if not _known(proposed, "config", "image"):
            return Plan(self.schema.unknown_computed(proposed), ["key"] if prior else [])
        from pim.engine.pipeline.build import current_inputs
        from pim.engine.errors import PimError

        cfg = _Config.load(proposed)
        try:
            keys, digests = current_inputs(cfg, proposed["image"], _store())
        except PimError as e:
            raise _errors(e) from None
        key = keys.final
        if prior is not None and prior.get("key") == key:  # where it would be built changes nothing
            return Plan(prior | {k: proposed.get(k) for k in ("config", "image", "builder")})
        # A build is not bit-for-bit reproducible: everything but the key and the inputs is known after apply.
        planned = self.schema.unknown_computed(proposed) | {"key": key, "id": key, "input_digests": digests}
        if prior is None:
            return Plan(planned)
        return Plan(planned, ["key", "input_digests"], _rebuild_warning(proposed["image"], prior, digests))

    def create(self, planned: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        from pim.engine import builders
        from pim.engine.errors import PimError
        from pim.engine.builders.route import RoutingError
        from pim.engine.remote import open_remote

        cfg = _Config.load(planned)
        events = _emitter()
        password = cfg.images[planned["image"]].ssh.password
        if password is not None:
            events.add_secret(password.get_secret_value())
        try:
            result = builders.build(cfg, planned["image"], events, store=_store(), builders=builders.load(cfg),
                                    remote=open_remote(cfg), override=planned.get("builder"), fetch=True)
        except PimError as e:
            raise _errors(e, "builder" if isinstance(e, RoutingError) else "image", events) from None
        # The planned input map stands: the object may be one built under other file names
        # (a renamed script of the same content), and the result must match the plan.
        return planned | _image_attrs(result.manifest_path, planned) | {"built_on": result.builder}

    def read(self, state: dict[str, Any]) -> dict[str, Any] | None:
        manifest = Path(state.get("manifest_path") or "/nonexistent")
        if not manifest.is_file() or not Path(state.get("path") or "/nonexistent").is_file():
            print(f"[WARN] pim: the build {str(state.get('key'))[:16]} is gone from PIM's cache: "
                  "it will be built again", file=sys.stderr, flush=True)
            return None
        return state | _image_attrs(manifest, state)

    def import_state(self, id: str) -> dict[str, Any]:
        """id: CONFIG:IMAGE, e.g. `pim.yaml:debian-12` (the image's newest build)."""
        from pim.engine.deploy.model import BuiltImage
        from pim.engine.errors import PimError

        config, sep, image = id.rpartition(":")
        if not sep or not config or not image:
            raise Diag(f"import id {id!r}: expected CONFIG:IMAGE, e.g. pim.yaml:debian-12")
        values = {"config": config, "image": image}
        _Config.load(values)
        try:
            built = BuiltImage.newest(_store(), image)
        except PimError as e:
            raise _errors(e, "image") from None
        assert built.path is not None
        return values | _image_attrs(built.path.parent / "manifest.json")


class ImageData(DataSource):
    schema = IMAGE_SCHEMA

    def validate(self, config: dict[str, Any]) -> None:
        ImageResource().validate(config)

    def read(self, config: dict[str, Any]) -> dict[str, Any]:
        from pim.engine.pipeline.build import lookup
        from pim.engine.errors import PimError

        cfg = _Config.load(config)
        try:
            found = lookup(cfg, config["image"], _store())
        except PimError as e:
            raise _errors(e) from None
        if found is None:
            raise Diag(f"image {config['image']!r} is not built for its current inputs",
                       f"Build it with `pim build {config['image']} --config {config['config']}`, "
                       "or manage it with the pim_image resource.", "image")
        return config | _image_attrs(found.manifest_path)


class DeploymentResource(Resource):
    schema = DEPLOYMENT_SCHEMA
    INPUTS = ("config", "image", "target", "image_key")

    def _target(self, values: dict[str, Any]) -> tuple[Any, Any]:
        cfg = _Config.load(values)
        if values["target"] not in cfg.targets:
            known = ", ".join(sorted(cfg.targets)) or "none"
            raise Diag(f"no target {values['target']!r} in {values['config']}; defined: {known}", "", "target")
        return cfg, cfg.targets[values["target"]]

    def validate(self, config: dict[str, Any]) -> None:
        _config_exists(config)

    def plan(self, prior: dict[str, Any] | None, proposed: dict[str, Any], config: dict[str, Any]) -> Plan:
        if _known(proposed, "config", "image", "target"):
            self._target(proposed)
        if prior is not None and all(prior.get(k) == proposed.get(k) for k in self.INPUTS):
            return Plan(prior)
        changed = [k for k in self.INPUTS if prior is not None and prior.get(k) != proposed.get(k)]
        replace = [k for k in changed if k != "config"]  # a moved config file alone changes nothing
        if prior is not None and not replace:
            return Plan(prior | {"config": proposed["config"]})
        return Plan(self.schema.unknown_computed(proposed), replace)

    def _image(self, values: dict[str, Any], required: bool) -> Any:
        from pim.engine.deploy.model import BuiltImage
        from pim.engine.store.manifest import ManifestError

        store, key = _store(), values["image_key"]
        if store.has(key):
            try:
                return BuiltImage.from_manifest(store.manifest(key), store.object(key) / "disk.qcow2")
            except ManifestError:
                pass  # unreadable: as good as gone; destroying or reading a deployment needs only its key
        if required:
            raise Diag(f"the build {key[:16]} of image {values['image']!r} is not in PIM's cache",
                       "Its pim_image resource builds it: refresh and apply.", "image_key")
        return BuiltImage.by_key(values["image"], key)

    def _outputs(self, values: dict[str, Any], target: Any, result: Any) -> dict[str, Any]:
        out = values | {"id": f"{values['target']}/{values['image_key']}", "type": result.type}
        out.update(dict.fromkeys(("vmid", "vmids", "node", "ami_id", "snapshot_id", "ami_ids", "snapshot_ids")))
        return out | result.ids(getattr(target, "region", None))

    def _engine(self, op: str, values: dict[str, Any], image_required: bool) -> tuple[Any, Any]:
        """(target, what deploy.<op> returned); engine errors as diagnostics on `target`."""
        from pim.engine import deploy
        from pim.engine.errors import PimError

        cfg, target = self._target(values)
        kw = {"base_dir": cfg.base_dir} | ({} if op == "delete" else {"target_name": values["target"]})
        try:
            return target, getattr(deploy, op)(target, self._image(values, image_required), _emitter(), **kw)
        except PimError as e:
            raise _errors(e, "target") from None

    def create(self, planned: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        target, result = self._engine("deploy", planned, True)
        return self._outputs(planned, target, result)

    def read(self, state: dict[str, Any]) -> dict[str, Any] | None:
        target, found = self._engine("exists", state, False)
        return None if found is None else self._outputs(state, target, found)

    def delete(self, prior: dict[str, Any]) -> None:
        self._engine("delete", prior, False)

    def import_state(self, id: str) -> dict[str, Any]:
        """id: CONFIG:IMAGE:TARGET (the image's newest build) or CONFIG:IMAGE:TARGET:KEY."""
        from pim.engine.deploy.model import BuiltImage
        from pim.engine.errors import PimError

        parts = id.split(":")
        key = parts.pop() if len(parts) >= 4 and len(parts[-1]) == 64 else None
        if len(parts) < 3:
            raise Diag(f"import id {id!r}: expected CONFIG:IMAGE:TARGET[:KEY], e.g. pim.yaml:debian-12:pve")
        values = {"config": ":".join(parts[:-2]), "image": parts[-2], "target": parts[-1]}
        try:
            values["image_key"] = key or BuiltImage.newest(_store(), values["image"]).key
        except PimError as e:
            raise _errors(e, "image") from None
        found = self.read(values)
        if found is None:
            raise Diag(f"build {values['image_key'][:16]} of {values['image']!r} is not deployed to "
                       f"{values['target']!r}: nothing to import")
        return found


class PimProvider(Provider):
    schema = Schema((Attr("cache_dir", S, "PIM's cache (default: $PIM_CACHE_DIR, else $XDG_CACHE_HOME/pim)",
                          optional=True),), "Builds VM images from installer ISOs and deploys them.")
    resources = {"pim_image": ImageResource(), "pim_deployment": DeploymentResource()}
    data_sources = {"pim_image": ImageData()}

    def configure(self, config: dict[str, Any]) -> None:
        _CACHE_ROOT.clear()
        if config.get("cache_dir"):
            _CACHE_ROOT.append(Path(config["cache_dir"]).resolve())


# The provider block's cache_dir, once Terraform has configured this process.
_CACHE_ROOT: list[Path] = []


def _store() -> Any:
    """The store of this provider process: the provider block's cache_dir, else
    $PIM_CACHE_DIR, else $XDG_CACHE_HOME/pim (read here, at the edge)."""
    from pim.engine.paths import cache_dir
    from pim.engine.store.objects import Store

    return Store(_CACHE_ROOT[0] if _CACHE_ROOT else cache_dir())


def main() -> None:
    from pim.tofu.plugin.server import serve

    sys.exit(serve(PimProvider()))


if __name__ == "__main__":
    main()
