"""`pim images verify`: a build's signed provenance checked against its files and key.

In order, each failure a VerificationFailed naming what does not hold:
1. the provenance envelope verifies with the public key (PIM's own by default);
2. its statement is an in-toto Statement v1 with a SLSA v1 provenance predicate, of
   this very build (its final key is the object's) with the artifact as its only subject;
3. the artifact's sha256, computed now, equals the subject's;
4. the SBOM's sha256, computed now, equals the statement's byproduct (files beside
   the artifact only);
5. the recorded stage inputs hash to the image's key: digest(final inputs) is the
   key, the final inputs name digest(provision inputs), those digest(install inputs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pim.engine.errors import PimError
from pim.engine.events import MASK
from pim.engine.pipeline.keys import digest, file_digest
from pim.engine.provenance import statement as st
from pim.engine.provenance.signing import SignatureError, open_envelope
from pim.engine.store.manifest import Manifest


class VerificationFailed(PimError):
    """A build's provenance, artifact or SBOM does not match; the message says which and how."""


@dataclass(frozen=True)
class Verified:
    """What a successful verify checked: the key id that signed, the artifact's sha256,
    the SBOM's (None without one), the number of resolved dependencies."""

    keyid: str
    artifact_sha256: str
    sbom_sha256: str | None
    dependencies: int


def verify(folder: Path, manifest: Manifest, public_key: Any) -> Verified:
    """Verify the final object in `folder` (its manifest `manifest`) with `public_key`
    (a securesystemslib key, `signing.load_public`). Raises VerificationFailed."""
    if manifest.artifact is None:
        raise VerificationFailed(f"{manifest.key[:12]} is a {manifest.stage} stage, not a built image")
    if manifest.provenance is None or not (folder / manifest.provenance.file).is_file():
        raise VerificationFailed(f"{manifest.key[:12]} has no provenance (built before PIM signed builds, or "
                                 "its file was removed); rebuild it with `pim build --force`")
    path = folder / manifest.provenance.file
    try:
        envelope = json.loads(path.read_text().splitlines()[0])
        statement = open_envelope(envelope, public_key)
    except (ValueError, IndexError) as e:
        raise VerificationFailed(f"{path} is not a DSSE envelope ({e})") from None
    except SignatureError as e:
        raise VerificationFailed(f"{path}: {e}") from None
    if statement.get("_type") != st.STATEMENT_TYPE or statement.get("predicateType") != st.PREDICATE_TYPE:
        raise VerificationFailed(f"{path}: not an in-toto Statement v1 with SLSA v1 provenance")
    predicate = statement.get("predicate") or {}
    internal = predicate.get("buildDefinition", {}).get("internalParameters", {})
    signed_key = predicate.get("runDetails", {}).get("metadata", {}).get("invocationId")
    if folder.name != manifest.key:
        raise VerificationFailed(f"the manifest in {folder} is that of build {manifest.key[:16]}: the object's "
                                 "files were swapped")
    if signed_key != manifest.key or (internal.get("stageKeys") or {}).get("final") != manifest.key:
        raise VerificationFailed(f"{path} is the provenance of build {str(signed_key)[:16]}, not of "
                                 f"{manifest.key[:16]}: the object's files were swapped")
    subjects = statement.get("subject", [])
    if len(subjects) != 1 or subjects[0].get("name") != manifest.artifact.file:
        raise VerificationFailed(f"{path}: the statement's subject is not this image's {manifest.artifact.file} alone")
    recorded_sha = subjects[0].get("digest", {}).get("sha256")
    artifact = folder / manifest.artifact.file
    actual = file_digest(artifact)
    if recorded_sha != actual:
        raise VerificationFailed(f"{artifact} was modified: its sha256 is {actual}, the signed statement says "
                                 f"{recorded_sha}")
    sbom_sha = None
    products = predicate.get("runDetails", {}).get("byproducts", [])
    names = [str(p.get("name")) for p in products]
    if manifest.sbom is not None and manifest.sbom.file not in names:
        raise VerificationFailed(f"{path}: the statement does not name the SBOM {manifest.sbom.file}")
    for product in products:
        name = str(product.get("name"))
        if "/" in name or name in (".", "..", "") or name.startswith("."):
            raise VerificationFailed(f"{path}: byproduct {name!r} is not a file beside the image")
        file = folder / name
        recorded = product.get("digest", {}).get("sha256")
        if not file.is_file():
            raise VerificationFailed(f"{file} is missing; the signed statement names it with sha256 {recorded}")
        sbom_sha = file_digest(file)
        if sbom_sha != recorded:
            raise VerificationFailed(f"{file} was modified: its sha256 is {sbom_sha}, the signed statement says "
                                     f"{recorded}")
    inputs = internal.get("stageInputs", {})
    try:
        chain = (digest(inputs["install"]), digest(inputs["provision"]), digest(inputs["final"]))
        linked = inputs["provision"]["install"] == chain[0] and inputs["final"]["provision"] == chain[1]
    except (KeyError, TypeError):
        raise VerificationFailed(f"{path}: the statement records no stage inputs") from None
    if not linked or chain[2] != manifest.key:
        masked = MASK in json.dumps(inputs)
        raise VerificationFailed(
            f"the recorded inputs hash to {chain[2][:16]}, not to the image's key {manifest.key[:16]}"
            + (": secrets in the image's settings were masked in the statement, so its inputs cannot be "
               "recomputed; keep secrets out of env and vars" if masked else ""))
    deps = predicate["buildDefinition"].get("resolvedDependencies", [])
    return Verified(public_key.keyid, actual, sbom_sha, len(deps))
