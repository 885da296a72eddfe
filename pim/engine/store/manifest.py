"""The typed record of every store object: one model, one reader, one writer.

Every published object (`objects/<key>/`) carries `manifest.json`, a `Manifest`:
which stage made it, for which image, from which objects (`uses`), the keys of its
lineage, what the stage recorded (`facts`), and for the final stage the artifact and
the spec it was built from (secrets masked). `schema_version` says which layout a
file has; `read` migrates older layouts so a store written by an earlier release
stays readable:

- version 1 (no `schema_version`): finals wrote `manifest.json` with lineage entries
  `{"key": ..., "allocated": ...}` and the ISO hash as a bare string; the install and
  boot stages wrote a small `stage.json` instead.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pim.engine.errors import BuildError

SCHEMA_VERSION = 2
FILE = "manifest.json"
LEGACY_STAGE_FILE = "stage.json"

StageName = Literal["install", "boot", "provision", "final"]


class ManifestError(BuildError):
    """A store object's manifest is missing or unreadable; the object cannot be used."""


class Artifact(BaseModel):
    """The final image file inside its object folder."""

    model_config = ConfigDict(extra="ignore")

    file: str = "disk.qcow2"
    format: str = "qcow2"
    sha256: str
    size: int  # bytes on disk
    virtual_size: int  # bytes the guest sees
    compression: str | None = None


class Attachment(BaseModel):
    """A file beside the artifact that describes it (the SBOM, the signed provenance)."""

    model_config = ConfigDict(extra="ignore")

    file: str
    sha256: str
    media_type: str


class StageRef(BaseModel):
    """One stage in an object's lineage: its key and, once known, its allocated bytes."""

    model_config = ConfigDict(extra="ignore")

    key: str
    allocated: int | None = None


class Manifest(BaseModel):
    """What one store object is and where it came from.

    `uses` maps the stage names of the objects this one is built on (its qcow2
    backing chain, its saved machine state) to their keys, `uses_ids` to the `id` of
    the very objects it was built on: an object must not be removed while anything
    that uses it is kept, and is stale once one of them was rebuilt. `lineage` holds every stage key up
    to this one; `iso` the installer's sha256; `stages` the facts (timings) of every
    stage of the build that made it, cached ones marked `cached`.
    """

    model_config = ConfigDict(extra="ignore")

    schema_version: int = SCHEMA_VERSION
    pim_version: str = ""
    stage: StageName
    image: str | None = None
    key: str
    id: str = ""  # unique per published object: a rebuilt object under the same key has a new one
    created: str | None = None
    iso: str | None = None
    uses: dict[str, str] = Field(default_factory=dict)
    uses_ids: dict[str, str] = Field(default_factory=dict)  # the `id` of each object in `uses`
    lineage: dict[str, StageRef] = Field(default_factory=dict)
    facts: dict[str, Any] = Field(default_factory=dict)
    stages: dict[str, dict[str, Any]] = Field(default_factory=dict)  # every stage's facts in the build that made it
    artifact: Artifact | None = None
    source: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, Any] = Field(default_factory=dict)
    tools: dict[str, Any] = Field(default_factory=dict)
    # final stage: the named inputs it was built from (`pipeline.explain.input_digests`),
    # its SBOM and its signed provenance
    input_digests: dict[str, str] = Field(default_factory=dict)
    sbom: Attachment | None = None
    provenance: Attachment | None = None

    @property
    def arch(self) -> str:
        return str(self.inputs.get("arch", "x86_64"))

    @property
    def firmware(self) -> str:
        return str(self.inputs.get("firmware", "bios"))

    @property
    def reads(self) -> dict[str, str]:
        """{stage: key} of the objects this one's files need at run time (a qcow2
        backing chain, a saved machine state): every object in `uses`, except for the
        final stage, whose artifact is flattened and stands alone."""
        return {} if self.stage == "final" else dict(self.uses)

    def stage_keys(self) -> dict[str, str]:
        """{stage: key} for the image stages of the lineage (install, provision, final)."""
        return {s: self.lineage[s].key for s in ("install", "provision", "final") if s in self.lineage}


def now() -> str:
    """The current UTC time as an ISO 8601 string with seconds, as manifests record it."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _migrate_v1(data: dict[str, Any], legacy_stage: bool) -> dict[str, Any]:
    if legacy_stage:  # {"stage": "install"|"boot", "image", "key", "install"?, facts...}
        known = {"stage", "image", "key", "install"}
        uses = {"install": data["install"]} if data.get("install") else {}
        return {"schema_version": 1, "stage": data["stage"], "image": data.get("image"), "key": data["key"],
                "uses": uses, "facts": {k: v for k, v in data.items() if k not in known}}
    lineage = dict(data.get("lineage", {}))
    iso = lineage.pop("iso", None)
    return {**data, "schema_version": 1, "stage": "final", "iso": iso, "lineage": lineage,
            "facts": data.get("stages", {}).get("final", {})}  # a flattened image: it uses no object


def read(folder: Path) -> Manifest:
    """The manifest of the object in `folder`, migrated to the current schema.

    Raises ManifestError when the folder has none or it cannot be parsed; the error
    names the file and says how to get rid of the object.
    """
    path, legacy = folder / FILE, False
    if not path.is_file() and (folder / LEGACY_STAGE_FILE).is_file():
        path, legacy = folder / LEGACY_STAGE_FILE, True
    try:
        data = json.loads(path.read_text())
        if "schema_version" not in data:
            data = _migrate_v1(data, legacy)
        elif data["schema_version"] > SCHEMA_VERSION:
            raise ManifestError(f"{path} has schema version {data['schema_version']}, newer than this PIM "
                                f"understands ({SCHEMA_VERSION}); upgrade PIM to use it")
        return Manifest.model_validate(data)
    except FileNotFoundError:
        raise ManifestError(f"{folder} has no {FILE}; remove it with `pim images rm {folder.name[:12]}`") from None
    except (OSError, ValueError, KeyError, ValidationError) as e:
        raise ManifestError(f"{path} is unreadable ({e}); remove it with `pim images rm {folder.name[:12]}`") from None


def write(folder: Path, manifest: Manifest) -> Path:
    """Write `folder/manifest.json` (atomically) and return its path."""
    path = folder / FILE
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(manifest.model_dump_json(indent=2, exclude_none=False))
    os.replace(tmp, path)
    return path
