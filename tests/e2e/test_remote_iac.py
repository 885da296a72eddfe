"""Terraform's pim_image and Pulumi's pim.Image with `builder`: routed to the remote
builder (a real sshd on 127.0.0.1), `built_on` in their outputs, and a stop from
either engine (StopProvider, SIGINT to the plugin) stops the build on the builder."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests import sshd
from tests.e2e.conftest import remote_config
from tests.tofu.tf import TERRAFORM, Terraform, needs_terraform

pytestmark = pytest.mark.e2e

STEP = {"type": "shell", "name": "iac", "inline": "echo routed by iac > /root/iac"}
PASSWORD = "iac-remote-s3cret"
MAIN_TF = """terraform {
  required_providers {
    pim = { source = "pim.invalid/pim/pim" }
  }
}
resource "pim_image" "e2e" {
  config  = "pim/pim.yaml"
  image   = "e2e"
  builder = "remote"
}
output "built_on" { value = pim_image.e2e.built_on }
output "path" { value = pim_image.e2e.path }
output "key" { value = pim_image.e2e.key }
output "sbom_path" { value = pim_image.e2e.sbom_path }
output "provenance_path" { value = pim_image.e2e.provenance_path }
output "manifest_path" { value = pim_image.e2e.manifest_path }
"""


def _wait_remote_qemu(host: sshd.BuilderHost, alive: Any, limit: float = 300) -> None:
    deadline = time.monotonic() + limit
    while not host.processes("qemu-system"):
        assert alive(), "the apply ended before the builder started QEMU"
        assert time.monotonic() < deadline, "no QEMU started on the builder"
        time.sleep(0.5)


def _clean(host: sshd.BuilderHost, before: set[str], limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while host.leftovers() or host.processes("agent build"):
        assert time.monotonic() < deadline, f"left on the builder: {host.leftovers()}"
        time.sleep(0.5)
    assert {p.name for p in (host.cache / "objects").iterdir()} == before


@needs_terraform
def test_terraform_builds_on_the_builder_and_stop_provider_stops_it(
        fixture_iso: Path, tmp_path: Path, builder_host: sshd.BuilderHost, runtime_root: Path) -> None:
    host = builder_host
    # With a password the keys hash it with the client's salt: the builder is given that salt,
    # or the key after apply would differ from the planned one.
    remote_config(tmp_path / "pim", fixture_iso, host, provision=[STEP], ssh={"timeout": "5m", "password": PASSWORD})
    (tmp_path / "main.tf").write_text(MAIN_TF)
    cache = tmp_path / "client-cache"
    tf = Terraform(tmp_path, tmp_path / "sandbox", {"PIM_CACHE_DIR": str(cache),
                                                    "XDG_RUNTIME_DIR": str(runtime_root)})
    tf("apply", "-auto-approve")
    out = json.loads(tf("output", "-json").stdout)
    assert out["built_on"]["value"] == "remote"
    assert Path(out["path"]["value"]).is_relative_to(cache) and Path(out["path"]["value"]).is_file()
    assert (host.cache / "objects" / out["key"]["value"]).is_dir(), "built on the builder"
    assert "No changes" in tf("plan").stdout
    assert PASSWORD not in (tmp_path / "terraform.tfstate").read_text()
    # the SBOM and the signed provenance came back with the artifact; neither holds the password
    from pim.engine.provenance.signing import payload_of

    texts = {attr: Path(out[attr]["value"]).read_text() for attr in ("sbom_path", "provenance_path", "manifest_path")}
    texts["statement"] = json.dumps(payload_of(json.loads(texts["provenance_path"])))
    assert all(Path(out[a]["value"]).parent == Path(out["path"]["value"]).parent for a in ("sbom_path", "provenance_path"))
    assert "components" in texts["sbom_path"] and "resolvedDependencies" in texts["statement"]
    assert not [name for name, text in texts.items() if PASSWORD in text]

    # Ctrl-C during a remote build: StopProvider ends it on the builder too
    remote_config(tmp_path / "pim", fixture_iso, host, vars={"extra": f"# {uuid.uuid4().hex}"})
    before = {p.name for p in (host.cache / "objects").iterdir()}
    proc = subprocess.Popen([str(TERRAFORM), "apply", "-auto-approve", "-no-color"], cwd=tmp_path, env=tf.env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_remote_qemu(host, lambda: proc.poll() is None)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, output
    _clean(host, before)


def _provider(env: dict[str, str]) -> Any:
    """The SDK's dynamic-provider server as the engine starts it, with SIGINT at its default
    (a suite run in the background inherits it ignored)."""
    from tests.pulumi.grpc_client import DynamicServer

    server = DynamicServer(env, "pulumi-python:dynamic/pim:Image")
    server.proc = subprocess.Popen(
        [sys.executable, "-c", "import signal, runpy, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                               "sys.argv = ['pulumi.dynamic', '127.0.0.1:1']; "
                               "runpy.run_module('pulumi.dynamic', run_name='__main__')"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    import grpc
    from pulumi.runtime.proto import provider_pb2_grpc

    port = int(server.proc.stdout.readline().decode().strip())
    threading.Thread(target=server._drain, daemon=True).start()
    server.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    server.stub = provider_pb2_grpc.ResourceProviderStub(server.channel)
    return server


def test_pulumi_builds_on_the_builder_and_a_cancellation_stops_it(
        fixture_iso: Path, tmp_path: Path, builder_host: sshd.BuilderHost, runtime_root: Path) -> None:
    from pim.pulumi_provider.image import ImageProvider
    from pim.pulumi_provider.inputs import IMAGE_OUTPUTS
    from tests.pulumi.grpc_client import provider_env, with_provider

    host = builder_host
    cache = tmp_path / "client-cache"
    env = provider_env(PIM_CACHE_DIR=str(cache), XDG_RUNTIME_DIR=str(runtime_root))
    config = remote_config(tmp_path / "pim", fixture_iso, host, provision=[STEP])
    server = _provider(env)
    try:
        server.configure({})
        props = with_provider({"config": str(config), "image": "e2e", "tags": {}, "delete_artifact": False,
                               "builder": "remote", **dict.fromkeys(IMAGE_OUTPUTS)}, ImageProvider())
        checked, failures = server.check("e2e", {}, props)
        assert failures == []
        _, outs = server.create("e2e", checked)
        assert outs["built_on"] == "remote" and Path(outs["path"]).is_relative_to(cache)
        assert (host.cache / "objects" / outs["content_key"]).is_dir()

        # the engine cancels (SIGINT to its plugin): the build on the builder stops
        fresh = remote_config(tmp_path / "pim2", fixture_iso, host, vars={"extra": f"# {uuid.uuid4().hex}"})
        before = {p.name for p in (host.cache / "objects").iterdir()}
        props2 = {**props, "config": str(fresh)}
        checked2, _ = server.check("e2e", {}, props2)
        outcome: list[Any] = []

        def create() -> None:
            try:
                outcome.append(server.create("e2e", checked2))
            except Exception as e:  # noqa: BLE001 - looked at below
                outcome.append(e)

        thread = threading.Thread(target=create, daemon=True)
        thread.start()
        _wait_remote_qemu(host, thread.is_alive)
        server.proc.send_signal(signal.SIGINT)
        thread.join(timeout=120)
        assert outcome and isinstance(outcome[0], Exception), outcome
        _clean(host, before)
    finally:
        server.stop()
