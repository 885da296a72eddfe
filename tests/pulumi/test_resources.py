"""The program-side classes: arguments, lazy export, timeouts, secrets (with set_mocks)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pulumi
import pytest

from pim.pulumi_provider.resources import go_duration, timeouts_of


class EchoMocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.inputs: dict[str, dict[str, Any]] = {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.inputs[args.name] = dict(args.inputs)
        return f"{args.name}-id", {**args.inputs, "content_key": "k" * 64, "manifest_path": "/m", "sha256": "s"}

    def call(self, args: pulumi.runtime.MockCallArgs) -> Any:
        return {}


@pytest.fixture
def mocks() -> EchoMocks:
    m = EchoMocks()
    asyncio.set_event_loop(asyncio.new_event_loop())  # set_mocks needs one; other tests may have closed it
    pulumi.runtime.set_mocks(m, project="p", stack="s", preview=False)
    return m


def test_pim_exports_the_resources_lazily() -> None:
    import pim
    from pim.pulumi_provider import resources

    assert pim.Image is resources.Image and pim.Deployment is resources.Deployment
    code = "import sys, pim.pulumi_provider.worker, pim.pulumi_provider.ops; print('pulumi' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", "the build worker must not pay for importing Pulumi"


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("30m", 1800), ("1h30m", 5400), ("1.5h", 5400),
                                           ("500ms", 0.5)])
def test_custom_timeouts_are_read_as_the_engine_reads_them(text: str, seconds: float) -> None:
    assert go_duration(text) == pytest.approx(seconds)


def test_bad_custom_timeouts_are_refused() -> None:
    with pytest.raises(ValueError, match="not a duration"):
        go_duration("ten minutes")
    opts = pulumi.ResourceOptions(custom_timeouts=pulumi.CustomTimeouts(create="45m", delete="5m"))
    assert timeouts_of(opts) == {"create": 2700.0, "delete": 300.0}
    assert timeouts_of(None) is None


def test_image_needs_exactly_one_of_config_and_spec(mocks: EchoMocks) -> None:
    import pim

    with pytest.raises(TypeError, match="not both"):
        pim.Image("a")
    with pytest.raises(TypeError, match="not both"):
        pim.Image("b", config="pim.yaml", spec={})
    with pytest.raises(TypeError, match="must be a pim.Image"):
        pim.Deployment("c", image="web", target="pve")  # type: ignore[arg-type]


@pulumi.runtime.test
def test_paths_are_absolute_and_secrets_are_secret(mocks: EchoMocks, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> Any:
    import pim

    monkeypatch.chdir(tmp_path)
    img = pim.Image("web", config="pim.yaml", ssh_password="hunter22")
    dep = pim.Deployment("tpl", image=img, target="pve", tags={"a": "b"})

    def check(args: list) -> None:
        is_secret, _ = args
        assert is_secret
        assert mocks.inputs["web"]["config"] == str(tmp_path / "pim.yaml")
        assert mocks.inputs["web"]["image"] == "web"
        assert mocks.inputs["tpl"]["config"] == str(tmp_path / "pim.yaml")  # the image's config by default
        assert mocks.inputs["tpl"]["target"] == "pve" and mocks.inputs["tpl"]["image_key"] == "k" * 64
    return pulumi.Output.all(img.ssh_password.is_secret(), dep.id).apply(check)  # type: ignore[attr-defined]
