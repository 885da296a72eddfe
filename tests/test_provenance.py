"""SBOM, signing and verify on files and JSON (no VM): the package query run on this
host's own dpkg database, CycloneDX output checked against its schema, DSSE envelopes
made and checked by securesystemslib, and each way a verify must fail."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from pim.engine.errors import InputError, ProvisionError
from pim.engine.provenance import packages, sbom, signing

DEB = ("os\tdebian\t12\tbookworm\n"
       "deb\tii \tbash\t5.2.15-2+b2\tamd64\t\n"
       "deb\trc \tgone\t1.0-1\tamd64\t\n"                # removed, config files left: not installed
       "deb\tii \tlibc6\t2.36-9+deb12u4\tamd64\tglibc\n"
       "deb\tii \tpython3-six\t1.16.0-4\tall\tsix\n")
RPM = ("os\trocky\t9.3\t\n"
       "rpm\tii \tbash\t5.1.8-6.el9\tx86_64\tbash-5.1.8-6.el9.src.rpm\n"
       "rpm\tii \topenssl-libs\t1:3.0.7-24.el9\tx86_64\topenssl-3.0.7-24.el9.src.rpm\n")


def test_dpkg_output_becomes_installed_packages_with_their_source() -> None:
    found = packages.parse(DEB)
    assert (found.os_id, found.os_version, found.manager) == ("debian", "12", "deb")
    assert [(p.name, p.version, p.arch, p.source) for p in found.packages] == [
        ("bash", "5.2.15-2+b2", "amd64", None), ("libc6", "2.36-9+deb12u4", "amd64", "glibc"),
        ("python3-six", "1.16.0-4", "all", "six")]


def test_every_installed_version_counts_and_keys_do_not() -> None:
    rpm = packages.parse(RPM + "rpm\tii \tkernel-core\t5.14.0-362.8.1.el9_3\tx86_64\tkernel-5.14.0-362.8.1.el9_3.src.rpm\n"
                               "rpm\tii \tkernel-core\t5.14.0-362.13.1.el9_3\tx86_64\tkernel-5.14.0-362.13.1.el9_3.src.rpm\n"
                               "rpm\tii \tgpg-pubkey\t350d275d-6279464b\t(none)\t(none)\n")
    assert [p.version for p in rpm.packages if p.name == "kernel-core"] == [
        "5.14.0-362.13.1.el9_3", "5.14.0-362.8.1.el9_3"]
    assert "gpg-pubkey" not in {p.name for p in rpm.packages}
    deb = packages.parse("os\tdebian\t12\t\ndeb\tiW \tman-db\t2.11.2-2\tamd64\t\ndeb\tiU \thalf\t1\tamd64\t\n")
    assert [p.name for p in deb.packages] == ["man-db"]  # triggers awaiting: installed; unpacked: not


def test_purls_follow_the_deb_and_rpm_types() -> None:
    deb = packages.parse(DEB)
    assert sbom.purl(deb, deb.packages[0]) == "pkg:deb/debian/bash@5.2.15-2%2Bb2?arch=amd64&distro=debian-12"
    rpm = packages.parse(RPM)
    ssl = next(p for p in rpm.packages if p.name == "openssl-libs")
    assert ssl.source == "openssl"
    # rpm's epoch is a qualifier, not part of the version
    assert sbom.purl(rpm, ssl) == "pkg:rpm/rocky/openssl-libs@3.0.7-24.el9?arch=x86_64&distro=rocky-9.3&epoch=1"


def test_output_without_packages_is_an_error_that_shows_it() -> None:
    with pytest.raises(ProvisionError, match="no list") as e:
        packages.parse("os\tdebian\t12\tbookworm\nsh: dpkg-query: not found\n")
    assert "dpkg-query: not found" in e.value.tail[-1]


@pytest.mark.skipif(not shutil.which("dpkg-query"), reason="this host has no dpkg database to read")
def test_the_query_reads_this_hosts_dpkg_database() -> None:
    out = subprocess.run(["sh", "-c", packages.QUERY], capture_output=True, text=True, check=True).stdout
    found = packages.parse(out)
    listed = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev} ${Package}:${Architecture}\n"],
                            capture_output=True, text=True, check=True).stdout.splitlines()
    installed = {line.split()[1] for line in listed if line[1:2] == "i"}
    assert {f"{p.name}:{p.arch}" for p in found.packages} == installed
    assert found.manager == "deb" and found.os_id


def test_the_sbom_is_valid_cyclonedx_1_5_with_the_image_as_subject(tmp_path: Path) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    path, sha = sbom.write(tmp_path, "web", "k" * 64, "d" * 64, "x86_64", packages.parse(DEB))
    text = path.read_text()
    assert JsonStrictValidator(SchemaVersion.V1_5).validate_str(text) is None
    doc = json.loads(text)
    assert doc["specVersion"] == "1.5" and len(sha) == 64
    assert doc["metadata"]["component"]["hashes"] == [{"alg": "SHA-256", "content": "d" * 64}]
    assert sorted(c["name"] for c in doc["components"]) == ["bash", "libc6", "python3-six"]
    assert doc["dependencies"][0]["ref"] == doc["metadata"]["component"]["bom-ref"]
    # one build, one serial number
    assert sbom.render("web", "k" * 64, "d" * 64, "x86_64", packages.parse(DEB)).count(doc["serialNumber"]) == 1


def test_the_signing_key_is_made_once_private_and_its_public_half_verifies(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv(signing.ENV, raising=False)
    envelope = signing.sign({"_type": "test", "value": 1})
    key = tmp_path / "pim" / "signing-key.pem"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    first = key.read_bytes()
    again = signing.sign({"_type": "test", "value": 2})
    assert key.read_bytes() == first and again["signatures"][0]["keyid"] == envelope["signatures"][0]["keyid"]
    public = signing.load_public(signing.public_key_path())
    assert signing.open_envelope(envelope, public) == {"_type": "test", "value": 1}
    forged = dict(envelope, payload=signing.sign({"_type": "test", "value": 3})["payload"])
    forged["signatures"] = envelope["signatures"]
    with pytest.raises(signing.SignatureError, match="does not verify"):
        signing.open_envelope(forged, public)
    with pytest.raises(signing.SignatureError, match="payload type"):
        signing.open_envelope(dict(envelope, payloadType="text/plain"), public)


def test_a_users_own_key_is_used_and_a_missing_one_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    own = tmp_path / "own.pem"
    own.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    monkeypatch.setenv(signing.ENV, str(own))
    envelope = signing.sign({"x": 1})
    assert signing.open_envelope(envelope, signing.load_public(own)) == {"x": 1}
    monkeypatch.setenv(signing.ENV, str(tmp_path / "nowhere.pem"))
    with pytest.raises(InputError, match="nowhere.pem: no such file"):
        signing.sign({"x": 1})
    (tmp_path / "junk.pem").write_text("not a key")
    monkeypatch.setenv(signing.ENV, str(tmp_path / "junk.pem"))
    with pytest.raises(InputError, match="not a usable PEM private key"):
        signing.sign({"x": 1})


def test_opening_an_envelope_leaves_it_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    envelope = signing.sign({"x": 1})
    before = json.dumps(envelope, sort_keys=True)
    signing.open_envelope(envelope, signing.load_public(signing.public_key_path()))
    assert json.dumps(envelope, sort_keys=True) == before


def _signed_build(tmp_path: Path, mutate=lambda doc: None) -> tuple[Path, Path, "object"]:
    """A recorded build (seeded, no VM) given a provenance statement as the final stage writes one."""
    import hashlib

    from pim.engine.config.spec import load_config
    from pim.engine.pipeline.build import current_inputs
    from pim.engine.provenance import statement
    from pim.engine.store import manifest as manifests
    from pim.engine.store.objects import Store
    from tests.helpers import MINIMAL_FILES, minimal_image, write_config
    from tests.pulumi.seed import seed_build

    config = write_config(tmp_path / "proj", {"web": minimal_image()}, MINIMAL_FILES)
    store = Store(tmp_path / "cache")
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(b"a stand-in for the artifact")
    cfg = load_config(config)
    key = seed_build(cfg, "web", store.root, disk, 1 << 30)
    store.set_ref("web", key, {})
    keys, named = current_inputs(cfg, "web", store)
    folder, m = store.object(key), store.manifest(key)
    doc = statement.build(image="web", key=key, artifact="disk.qcow2", artifact_sha256=m.artifact.sha256,
                          iso="installer.iso", iso_sha256="0" * 64, spec={}, stage_keys=keys.as_dict(), stage_inputs=keys.inputs,
                          input_digests=named, builder="local", accel="tcg", qemu="QEMU 7.2", pim_version="0.1.0",
                          started="2026-01-01T00:00:00+00:00", finished="2026-01-01T00:01:00+00:00", byproducts=[])
    mutate(doc)
    data = (json.dumps(signing.sign(doc)) + "\n").encode()
    (folder / statement.FILE).write_bytes(data)
    m.provenance = manifests.Attachment(file=statement.FILE, sha256=hashlib.sha256(data).hexdigest(),
                                        media_type=statement.MEDIA_TYPE)
    manifests.write(folder, m)
    return config, store.root, m


def test_verify_checks_that_the_recorded_inputs_hash_to_the_key(tmp_path: Path) -> None:
    from pim.engine.provenance.verify import VerificationFailed, verify

    _, cache, m = _signed_build(tmp_path / "good")
    key = signing.load_public(signing.public_key_path())
    folder = cache / "objects" / m.key
    assert verify(folder, m, key).artifact_sha256 == m.artifact.sha256
    with pytest.raises(VerificationFailed, match="has no provenance"):
        verify(folder, m.model_copy(update={"provenance": None}), key)
    # another build's files under this key: caught by the key the statement was signed for
    with pytest.raises(VerificationFailed, match="files were swapped"):
        verify(folder, m.model_copy(update={"key": "f" * 64}), key)
    moved = tmp_path / ("f" * 64)
    shutil.copytree(folder, moved)
    with pytest.raises(VerificationFailed, match="files were swapped"):
        verify(moved, m.model_copy(update={"key": "f" * 64}), key)

    def edit_inputs(doc: dict) -> None:
        doc["predicate"]["buildDefinition"]["internalParameters"]["stageInputs"]["install"]["disk_size"] = 1

    _, cache, m = _signed_build(tmp_path / "edited", edit_inputs)
    with pytest.raises(VerificationFailed, match=f"not to the image's key {m.key[:16]}"):
        verify(cache / "objects" / m.key, m, key)

    def escape(doc: dict) -> None:
        doc["predicate"]["runDetails"]["byproducts"] = [{"name": "../x", "digest": {"sha256": "0" * 64}}]

    _, cache, m = _signed_build(tmp_path / "escape", escape)
    with pytest.raises(VerificationFailed, match="not a file beside the image"):
        verify(cache / "objects" / m.key, m, key)


def test_pim_images_verify(tmp_path: Path) -> None:
    import sys

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    _, cache, m = _signed_build(tmp_path)
    env = {**os.environ, "PIM_CACHE_DIR": str(cache)}
    pim = [sys.executable, "-m", "pim.cli.main", "images", "verify"]
    ok = subprocess.run([*pim, "web"], capture_output=True, text=True, env=env, timeout=60)
    assert ok.returncode == 0 and f"verified {m.key[:12]} (web)" in ok.stdout, ok.stderr
    other = tmp_path / "other.pub"
    other.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    bad = subprocess.run([*pim, m.key[:12], "--key", str(other)], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 1 and "signature does not verify" in bad.stderr
    (cache / "objects" / m.key / "disk.qcow2").write_bytes(b"a modified artifact")
    bad = subprocess.run([*pim, "web"], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 1 and "disk.qcow2 was modified" in bad.stderr
