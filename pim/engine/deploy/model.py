"""What a deploy takes and gives back: a built image in, a JSON-able result out."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pim.engine.errors import BuildError, InputError

if TYPE_CHECKING:
    from pim.engine.store.manifest import Manifest
    from pim.engine.store.objects import Store


class DeployError(BuildError):
    """A deploy failed after it started; whatever it had created was removed again."""


@dataclass(frozen=True)
class BuiltImage:
    """The facts a deploy needs about one build, read from its manifest."""

    name: str
    key: str  # the build's content key: the deployment's identity
    path: Path | None  # disk.qcow2; None when only deleting by key
    sha256: str = ""
    size: int = 0
    virtual_size: int = 0
    arch: str = "x86_64"
    firmware: str = "bios"
    lineage: dict[str, Any] = field(default_factory=dict)
    sbom_sha256: str = ""  # of the build's SBOM ("" without one)
    provenance_sha256: str = ""  # of its signed provenance ("" without one)

    @classmethod
    def from_manifest(cls, manifest: "Manifest", path: Path) -> "BuiltImage":
        """The image a final stage's manifest describes; InputError for any other stage."""
        art = manifest.artifact
        if art is None:
            raise InputError(f"{manifest.key[:12]} is a {manifest.stage} stage, not a built image")
        lineage: dict[str, Any] = {s: ref.model_dump() for s, ref in manifest.lineage.items()}
        if manifest.iso:
            lineage["iso"] = manifest.iso
        return cls(manifest.image or "", manifest.key, path, art.sha256, art.size, art.virtual_size,
                   manifest.arch, manifest.firmware, lineage, manifest.sbom.sha256 if manifest.sbom else "",
                   manifest.provenance.sha256 if manifest.provenance else "")

    @classmethod
    def newest(cls, store: "Store", image: str) -> "BuiltImage":
        """The newest build of `image` in the store (what `pim build` last produced)."""
        ref = store.get_ref(image)
        if not ref or not store.has(ref["key"]):
            raise InputError(f"image {image!r} has not been built yet: run `pim build {image}` first")
        return cls.from_manifest(store.manifest(ref["key"]), store.object(ref["key"]) / "disk.qcow2")

    @classmethod
    def by_key(cls, image: str, key: str) -> "BuiltImage":
        """Enough to find and delete a deployment whose build may be gone."""
        if len(key) != 64:
            raise InputError(f"{key!r} is not a content key: 64 hexadecimal digits expected")
        return cls(image, key, None)

    @property
    def attestation_digests(self) -> dict[str, str]:
        """{"sbom", "provenance": sha256 hex} of the files that describe the build, those it has."""
        return {k: v for k, v in (("sbom", self.sbom_sha256), ("provenance", self.provenance_sha256)) if v}

    @property
    def lineage_tags(self) -> dict[str, str]:
        """Flat lineage (stage keys, ISO hash) short enough for cloud tags."""
        out = {}
        for stage, value in sorted(self.lineage.items()):
            if isinstance(value, dict) and "key" in value:
                out[stage] = str(value["key"])
            elif isinstance(value, str):
                out[stage] = value
        return out


@dataclass(frozen=True)
class DeployResult:
    target: str
    type: str  # proxmox | aws
    image: str
    key: str
    created: bool  # False: everything already existed and nothing was sent
    resources: dict[str, Any]  # proxmox: vmid, node, volume; aws: regions -> {ami, snapshot}
    stats: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def ids(self, region: str | None = None) -> dict[str, Any]:
        """What front ends show: Proxmox vmid and node (of the first node) and vmids
        per node; AWS the AMI and snapshot in `region` (the target's own) and both per region."""
        res = self.resources
        if self.type == "proxmox":
            vmids = res.get("vmids") or {res["node"]: res["vmid"]}
            return {"vmid": int(res["vmid"]), "node": res["node"], "vmids": {n: int(v) for n, v in vmids.items()}}
        regions = res["regions"]
        home = regions[region] if region in regions else next(iter(regions.values()))
        return {"ami_id": home["ami"], "snapshot_id": home["snapshot"],
                "ami_ids": {r: v["ami"] for r, v in regions.items()},
                "snapshot_ids": {r: v["snapshot"] for r, v in regions.items()}}
