"""The build's provenance: an in-toto Statement v1 with a SLSA v1 provenance predicate.

Formats: in-toto Attestation Framework, Statement layer v1
(github.com/in-toto/attestation, spec/v1/statement.md) and SLSA Provenance v1
(slsa.dev/spec/v1.0/provenance). PIM fills them so:

subject                  the qcow2 (its file name and sha256)
buildDefinition
  externalParameters     the image's name and its spec (secrets masked)
  internalParameters     `stageKeys`: the install, provision and final keys;
                         `stageInputs`: the inputs every stage key is the digest of
                         (`pipeline.keys`), so a verifier can recompute the key;
                         `inputDigests`: the same, named (`pipeline.explain`)
  resolvedDependencies   the ISO (as given: URL or path) and every file the keys read
runDetails
  builder                `urn:pim:builder:<where it ran>` with PIM's and QEMU's versions
                         and the accelerator
  metadata               invocationId (the final key), startedOn, finishedOn
  byproducts             the SBOM with its digest
"""

from __future__ import annotations

from typing import Any

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "urn:pim:build-type:image:v1"
FILE = "provenance.intoto.jsonl"  # one DSSE envelope per line, as SLSA generators write them
MEDIA_TYPE = "application/vnd.in-toto+json"


def build(*, image: str, key: str, artifact: str, artifact_sha256: str, iso: str, iso_sha256: str,
          spec: dict[str, Any], stage_keys: dict[str, str], stage_inputs: dict[str, Any],
          input_digests: dict[str, str],
          builder: str, accel: str, qemu: str, pim_version: str, started: str, finished: str,
          byproducts: list[dict[str, Any]]) -> dict[str, Any]:
    """The Statement as JSON-able dict. Digests are sha256 hex; times ISO 8601 UTC.

    `stage_inputs` is `StageKeys.inputs` ({install, provision, final: inputs}); `spec`
    the image spec already masked; `byproducts` SLSA ResourceDescriptors
    ({name, digest: {sha256}, mediaType}).
    """
    files = [{"name": name.removesuffix(" content"), "digest": {"sha256": value}}
             for name, value in input_digests.items()
             if name.endswith(" content") and len(value) == 64]
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": artifact, "digest": {"sha256": artifact_sha256}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"image": image, "spec": spec},
                "internalParameters": {"stageKeys": stage_keys, "stageInputs": stage_inputs,
                                       "inputDigests": input_digests},
                "resolvedDependencies": [{"name": "iso", "uri": iso, "digest": {"sha256": iso_sha256}}, *files],
            },
            "runDetails": {
                "builder": {
                    "id": f"urn:pim:builder:{builder}",
                    "version": {"pim": pim_version, "qemu": qemu},
                    "builderDependencies": [{"name": "accelerator", "annotations": {"accel": accel}}],
                },
                "metadata": {"invocationId": key, "startedOn": started, "finishedOn": finished},
                "byproducts": byproducts,
            },
        },
    }
