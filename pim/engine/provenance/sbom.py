"""The image's SBOM: CycloneDX 1.5 JSON, written with cyclonedx-python-lib.

The described component (`metadata.component`) is the image itself, the qcow2
with its sha256; every installed package is a component with a package URL.
Package URLs follow the purl specification's `deb` and `rpm` types
(github.com/package-url/purl-spec, PURL-TYPES.rst): namespace = the distribution
(os-release ID), qualifiers `arch` and `distro` (`debian-12`), rpm's epoch as the
`epoch` qualifier.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pim.engine.provenance.packages import Package, PackageList

FILE = "sbom.cdx.json"
MEDIA_TYPE = "application/vnd.cyclonedx+json"
SPEC_VERSION = "1.5"


def purl(pkgs: PackageList, pkg: Package) -> str:
    """The package URL of one package, e.g. `pkg:deb/debian/bash@5.2.15-2%2Bb2?arch=amd64&distro=debian-12`."""
    from packageurl import PackageURL

    qualifiers = {"arch": pkg.arch}
    distro = "-".join(p for p in (pkgs.os_id, pkgs.os_version) if p)
    if distro:
        qualifiers["distro"] = distro
    version = pkg.version
    if pkgs.manager == "rpm" and ":" in version:
        epoch, version = version.split(":", 1)
        qualifiers["epoch"] = epoch
    return PackageURL(type=pkgs.manager, namespace=pkgs.os_id, name=pkg.name, version=version,
                      qualifiers=qualifiers).to_string()


def render(image: str, key: str, artifact_sha256: str, arch: str, pkgs: PackageList) -> str:
    """The SBOM as CycloneDX 1.5 JSON text. `image` is the image's name, `key` its
    content key (the SBOM's serial number is derived from it, so one build has one)."""
    import uuid

    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output import make_outputter
    from cyclonedx.schema import OutputFormat, SchemaVersion
    from packageurl import PackageURL

    subject = Component(
        name=image, version=key[:16], type=ComponentType.OPERATING_SYSTEM, bom_ref=f"image:{key}",
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=artifact_sha256)],
        description=f"{pkgs.os_id} {pkgs.os_version} {arch} qcow2 image built by PIM".replace("  ", " "),
        properties=[Property(name="pim:key", value=key), Property(name="pim:arch", value=arch)],
    )
    bom = Bom(serial_number=uuid.uuid5(uuid.NAMESPACE_URL, f"pim:sbom:{key}"))
    bom.metadata.component = subject
    components = []
    for pkg in pkgs.packages:
        ref = purl(pkgs, pkg)
        components.append(Component(
            name=pkg.name, version=pkg.version, type=ComponentType.LIBRARY if pkg.name.startswith("lib")
            else ComponentType.APPLICATION, purl=PackageURL.from_string(ref), bom_ref=ref,
            properties=[Property(name="pim:package:source", value=pkg.source)] if pkg.source else None,
        ))
    bom.components.update(components)
    bom.register_dependency(subject, components)
    return make_outputter(bom, OutputFormat.JSON, SchemaVersion.V1_5).output_as_string(indent=1)


def preload() -> None:
    """Import what `write` uses (cyclonedx-python-lib, packageurl: about 0.1 s), for a
    thread to do while something else waits (the final stage's qemu-img)."""
    import importlib

    for module in ("cyclonedx.model.bom", "cyclonedx.model.component", "cyclonedx.output", "cyclonedx.schema",
                   "packageurl"):
        importlib.import_module(module)


def write(folder: Path, image: str, key: str, artifact_sha256: str, arch: str, pkgs: PackageList) -> tuple[Path, str]:
    """Write `folder/sbom.cdx.json`; returns (path, sha256 hex of its bytes)."""
    data = render(image, key, artifact_sha256, arch, pkgs).encode()
    path = folder / FILE
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()
