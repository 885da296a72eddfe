"""A real build of the fixture installer ISO under QEMU (TCG here), then the
artifact booted again and inspected through QMP and the guest agent."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from packageurl import PackageURL

from pim.engine.pipeline.build import build
from pim.engine.errors import ProvisionError
from pim.engine.events import Emitter, Event
from pim.engine.qemu.argv import RuntimeFiles, VmConfig
from pim.engine.qemu.machine import Machine
from pim.engine.config.spec import load_config
from pim.engine.store.objects import Store
from tests.e2e.conftest import apt_package_url, make_config


pytestmark = pytest.mark.e2e

FETCH = """python3 - <<'PY'
import hashlib, os, urllib.request
proxy = urllib.request.ProxyHandler({"http": os.environ["PIM_PROXY_URL"]})
data = urllib.request.build_opener(proxy).open(os.environ["PKG_URL"], timeout=120).read()
open("/root/pkg.sha256", "w").write(hashlib.sha256(data).hexdigest())
PY
"""

STEPS = [
    {"type": "shell", "name": "write-marker", "env": {"STEP_VALUE": "from-step env"},
     "inline": 'echo "$GLOBAL_VALUE / $STEP_VALUE" > /root/pim-e2e-marker\necho provisioned'},
    {"type": "file", "source": "motd", "destination": "/etc/pim-e2e/motd", "mode": "0600"},
    # A guest fetching a real package through PIM's caching proxy (URL and sha256 from host apt).
    {"type": "shell", "name": "fetch-package", "inline": FETCH},
    {"type": "shell", "name": "reboot", "inline": "systemctl reboot", "expect_disconnect": True},
    {"type": "shell", "name": "after-reboot", "inline": "cat /proc/sys/kernel/random/boot_id > /root/after-reboot"},
]


@pytest.fixture(scope="module")
def built(fixture_iso: Path, tmp_path_factory: pytest.TempPathFactory, pim_cache: Path, runtime_root: Path,
          module_pim_env: None):
    folder = tmp_path_factory.mktemp("e2e-main")
    (folder / "motd").write_text("uploaded by pim\n")
    pkg_url, _ = apt_package_url()
    env = {"GLOBAL_VALUE": "global", "PKG_URL": pkg_url}
    cfg = load_config(make_config(folder, fixture_iso, provision=STEPS, env=env))
    events: list[Event] = []
    result = build(cfg, "e2e", Emitter(events.append), store=Store(pim_cache))
    return cfg, result, events


def test_build_fetched_answer_ran_steps_and_published(built) -> None:
    cfg, result, events = built
    messages = [e.message for e in events]
    assert any("answer server: GET answer 200" in m for m in messages)
    assert any(m == "[1:write-marker] provisioned" for m in messages)
    assert any("step 4:reboot done; waiting for the guest" in m for m in messages)
    assert result.path.is_file() and not result.cached
    manifest = result.manifest()
    assert manifest.stage == "final" and manifest.artifact is not None
    assert manifest.artifact.sha256 == result.sha256
    assert manifest.stages["install"]["answer_fetched"] is True
    # compressed and generalized artifact is smaller than what the installer wrote
    assert manifest.artifact.size < manifest.lineage["install"].allocated
    assert manifest.artifact.compression in ("zstd", "zlib")
    assert [s["step"] for s in manifest.stages["provision"]["steps"]] == [
        "write-marker", "upload /etc/pim-e2e/motd", "fetch-package", "reboot", "after-reboot"]


def test_every_stage_records_where_its_time_went(built) -> None:
    """Each stage's phases are in its facts and in the events; a boot is split at the
    console's milestones; QEMU's running time is reported for every VM."""
    _, result, events = built
    stages = result.manifest().stages
    names = {stage: [p["phase"] for p in stages[stage]["phases"]] for stage in ("install", "provision", "final")}
    assert names["install"][:4] == ["disk, answer files and boot files", "QEMU start", "firmware", "kernel"]
    assert names["install"][-1] == "installer"
    assert names["provision"][-1] == "shutdown" and "generalize" in names["provision"]
    assert [n for n in names["provision"] if n.startswith("step ")] == [
        "step 1:write-marker", "step 2:upload /etc/pim-e2e/motd", "step 3:fetch-package", "step 4:reboot",
        "step 5:after-reboot"]
    assert names["final"][0].startswith("convert") and names["final"][-1] == "SBOM and provenance"
    for stage in ("install", "provision", "final"):
        phases = stages[stage]["phases"]
        assert all(p["seconds"] >= 0 for p in phases)
        assert sum(p["seconds"] for p in phases) <= stages[stage]["seconds"] + 1.0
    if not stages["boot"].get("cached"):
        boot = [p["phase"] for p in stages["boot"]["phases"]]
        assert boot == ["overlay", "QEMU start", "firmware", "kernel", "userspace to sshd", "SSH login",
                        "guest agent", "save state", "QEMU exit"]
    phase_events = [e for e in events if "phase" in e.data]
    assert {e.stage for e in phase_events} >= {"install", "provision", "final"}
    ran = [e for e in events if "qemu_seconds" in e.data]
    assert {e.stage for e in ran} >= {"install", "provision"} and all(e.data["qemu_seconds"] > 0 for e in ran)


def test_guest_fetched_a_package_through_the_cache(built, pim_cache: Path) -> None:
    _, _, events = built
    _, sha = apt_package_url()
    assert any("package cache: stored hello_" in e.message for e in events)
    cached = [p for p in (pim_cache / "packages").iterdir() if not p.name.startswith(".")]
    assert sha in {hashlib.sha256(p.read_bytes()).hexdigest() for p in cached}


def test_no_qemu_or_runtime_file_left(built, runtime_root: Path) -> None:
    leftovers = [p.name for p in (runtime_root / "pim").iterdir() if not p.name.startswith("accel-")]
    assert leftovers == []


def test_artifact_boots_and_answers_qmp_and_guest_agent(built, tmp_path: Path) -> None:
    cfg, result, _ = built
    vm_cfg = VmConfig(name="e2e-check", disk=result.path, serial_log=tmp_path / "serial.log",
                      runtime=RuntimeFiles.for_name("e2e-check"), memory_mib=1024, snapshot=True)
    with Machine(vm_cfg, Emitter(), "check") as vm:
        assert vm.qmp_call("query-status")["status"] == "running"
        agent = vm.agent(timeout=240)
        agent.ping()
        assert any(c["name"] == "guest-exec" for c in agent.info()["supported_commands"])
        marker = agent.file_read("/root/pim-e2e-marker").decode()
        assert marker == "global / from-step env\n"
        assert agent.file_read("/etc/pim-e2e/motd") == b"uploaded by pim\n"
        code, out, _ = agent.exec(["/usr/bin/stat", "-c", "%a", "/etc/pim-e2e/motd"])
        assert (code, out.strip()) == (0, b"600")
        assert agent.file_read("/root/after-reboot").strip()  # the step after the reboot ran
        assert agent.file_read("/root/pkg.sha256").decode() == apt_package_url()[1]
        keys = agent.file_read("/root/.ssh/authorized_keys").decode()
        assert "pim-build-" not in keys, "the build key must be removed"
        code, out, _ = agent.exec(["/usr/bin/cloud-init", "--version"])
        assert code == 0
        agent.file_write("/root/written-by-agent", b"x")
        assert agent.file_read("/root/written-by-agent") == b"x"
        ifaces = agent.network_interfaces()
        assert any(i["name"] != "lo" for i in ifaces)
        code, out, _ = agent.exec(["/usr/bin/dpkg-query", "-W", "-f",
                                   "${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\n"])
        assert code == 0
        assert vm.stop(graceful=120) == "guest agent shutdown"
    # The SBOM written at build time lists exactly what dpkg says is installed in the image.
    installed = {tuple(line.split("\t")[1:]) for line in out.decode().splitlines() if line[1:2] == "i"}
    sbom = json.loads((result.path.parent / "sbom.cdx.json").read_text())
    listed = {(c["name"], c["version"], PackageURL.from_string(c["purl"]).qualifiers["arch"])
              for c in sbom["components"]}
    assert len(installed) > 100 and listed == installed
    assert {"cloud-init", "openssh-server", "qemu-guest-agent"} <= {name for name, _, _ in listed}


def test_second_build_is_a_cache_hit_without_qemu(built, pim_cache: Path) -> None:
    cfg, first, _ = built
    events: list[Event] = []
    again = build(cfg, "e2e", Emitter(events.append), store=Store(pim_cache))
    assert again.cached and again.path == first.path and again.sha256 == first.sha256
    assert not any("starting QEMU" in e.message for e in events)
    # The build recorded the inputs it was made from: explain finds every stage cached.
    from pim.engine.pipeline.build import current_inputs, explain_image

    assert first.manifest().input_digests == current_inputs(cfg, "e2e", Store(pim_cache))[1]
    assert [(s.stage, s.cached) for s in explain_image(cfg, "e2e", Store(pim_cache))] == [
        ("install", True), ("provision", True), ("final", True)]


def test_failing_step_names_itself_and_reuses_install(fixture_iso: Path, tmp_path: Path, built,
                                                       pim_cache: Path) -> None:
    steps = [{"type": "shell", "name": "broken", "inline": "echo about to fail\nexit 7"}]
    cfg = load_config(make_config(tmp_path, fixture_iso, provision=steps))
    events: list[Event] = []
    with pytest.raises(ProvisionError) as e:
        build(cfg, "e2e", Emitter(events.append), store=Store(pim_cache))
    assert "1:broken" in str(e.value) and "exit status 7" in str(e.value)
    assert "about to fail" in e.value.tail
    install_end = next(ev for ev in events if ev.kind == "stage-end" and ev.stage == "install")
    assert install_end.data["cached"] is True


def test_manifest_has_no_secrets(fixture_iso: Path, built) -> None:
    _, result, events = built
    text = result.manifest_path.read_text() + (result.path.parent / "provenance.intoto.jsonl").read_text()
    assert "PRIVATE KEY" not in text
    assert "PRIVATE KEY" not in json.dumps([e.message for e in events])


def test_sbom_is_cyclonedx_with_the_image_as_subject(built) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    _, result, _ = built
    manifest = result.manifest()
    text = (result.path.parent / "sbom.cdx.json").read_text()
    assert JsonStrictValidator(SchemaVersion.V1_5).validate_str(text) is None
    sbom = json.loads(text)
    subject = sbom["metadata"]["component"]
    assert subject["name"] == "e2e" and subject["hashes"] == [{"alg": "SHA-256", "content": result.sha256}]
    assert all(c["purl"].startswith("pkg:deb/debian/") and "arch=" in c["purl"] for c in sbom["components"])
    assert manifest.sbom is not None
    assert manifest.sbom.sha256 == hashlib.sha256(text.encode()).hexdigest()


def test_provenance_verifies_and_each_tampered_file_fails(built, tmp_path: Path) -> None:
    import shutil

    from pim.engine.provenance import signing
    from pim.engine.provenance.verify import VerificationFailed, verify

    _, result, _ = built
    manifest, key = result.manifest(), signing.load_public(signing.public_key_path())
    done = verify(result.path.parent, manifest, key)
    assert done.artifact_sha256 == result.sha256 and done.sbom_sha256 == manifest.sbom.sha256
    copy = tmp_path / manifest.key
    shutil.copytree(result.path.parent, copy)

    def flip(name: str, offset: int) -> bytes:
        path = copy / name
        data = path.read_bytes()
        path.write_bytes(data[:offset] + bytes([data[offset] ^ 1]) + data[offset + 1:])
        return data

    for name, offset, expect in (("disk.qcow2", 1 << 20, "disk.qcow2 was modified"),
                                 ("sbom.cdx.json", 200, "sbom.cdx.json was modified"),
                                 ("provenance.intoto.jsonl", 100, "signature does not verify")):
        original = flip(name, offset)
        with pytest.raises(VerificationFailed, match=expect):
            verify(copy, manifest, key)
        (copy / name).write_bytes(original)
    verify(copy, manifest, key)
    statement = signing.payload_of(json.loads((copy / "provenance.intoto.jsonl").read_text()))
    assert statement["subject"] == [{"name": "disk.qcow2", "digest": {"sha256": result.sha256}}]
    deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert deps[0]["digest"]["sha256"] == manifest.iso and any(d["name"] == "provision: motd" for d in deps)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    other = tmp_path / "other.pub"
    other.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(VerificationFailed, match="signature does not verify"):
        verify(copy, manifest, signing.load_public(other))
