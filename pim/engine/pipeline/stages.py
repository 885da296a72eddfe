"""The build's four stages, in the order the loop runs them:

    install -> boot snapshot -> provision -> final

Each has a name, computes its key (`keys.py`), and runs into a staging folder that
the build loop publishes as a store object. The runners are imported when a stage
runs, so computing keys (an IaC plan) loads no QEMU, SSH or HTTP code.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pim.engine.errors import LoginRefused, PimError, ResumeFailed
from pim.engine.pipeline import keys as keymod
from pim.engine.pipeline.context import BuildContext
from pim.engine.pipeline.stage import DISK, Stage, StageOutput, StageResult, StageSkipped, allocated, build_key


class InstallStage:
    name, optional, in_lineage, needs = "install", False, True, ()

    def key(self, ctx: BuildContext) -> str:
        return ctx.keys.install

    def run(self, ctx: BuildContext, staging: Path, inputs: dict[str, StageOutput]) -> StageResult:
        from pim.engine.guest.ssh import KeyPair
        from pim.engine.pipeline.install import run_install

        key = KeyPair.generate(comment=f"pim-build-{ctx.keys.install[:12]}")
        facts = run_install(ctx, staging / DISK, key)
        _write_private(staging / "build_key", key.private_openssh)
        (staging / "build_key.pub").write_text(key.public_openssh + "\n")
        return StageResult({**facts, "allocated": allocated(staging / DISK)})


class BootStage:
    name, optional, in_lineage, needs = "boot", True, False, ("install",)

    def key(self, ctx: BuildContext) -> str | None:
        if not ctx.spec.snapshot:
            return None
        from pim.engine.qemu import img

        return keymod.boot_key(ctx.spec, ctx.keys.install, ctx.accel, img.qemu_version(ctx.spec.arch.value))

    def run(self, ctx: BuildContext, staging: Path, inputs: dict[str, StageOutput]) -> StageResult:
        from pim.engine.pipeline.boot import snapshot

        install = inputs["install"]
        started = time.monotonic()
        try:
            facts = snapshot(ctx, install.path, staging, build_key(install))
        except LoginRefused:
            raise  # provisioning would be refused the same way
        except PimError as e:  # an interrupt is no PimError: it ends the build
            raise StageSkipped(f"no booted snapshot ({e}); provisioning boots the guest instead") from e
        facts["seconds"] = round(time.monotonic() - started, 1)
        return StageResult(facts, uses={"install": install.key})


class ProvisionStage:
    name, optional, in_lineage, needs = "provision", False, True, ("install", "boot")

    def key(self, ctx: BuildContext) -> str:
        return ctx.keys.provision

    def run(self, ctx: BuildContext, staging: Path, inputs: dict[str, StageOutput]) -> StageResult:
        from pim.engine.pipeline.provision import run_provision

        base, install = inputs.get("boot") or inputs["install"], inputs["install"]
        try:
            facts = run_provision(ctx, base.path, staging / DISK, build_key(install))
        except ResumeFailed as e:
            if base is install:
                raise
            # The snapshot only saves time: a state that no longer loads (another
            # host CPU, say) must not fail the build. Boot the installed disk instead.
            ctx.events.warning(self.name, f"{e}; booting the installed system instead")
            for leftover in staging.iterdir():
                leftover.unlink()
            base = install
            facts = run_provision(ctx, base.path, staging / DISK, build_key(install))
        facts["allocated"] = allocated(staging / DISK)
        return StageResult(facts, uses={base.stage: base.key})


class FinalStage:
    name, optional, in_lineage, needs = "final", False, True, ("provision",)

    def key(self, ctx: BuildContext) -> str:
        return ctx.keys.final

    def run(self, ctx: BuildContext, staging: Path, inputs: dict[str, StageOutput]) -> StageResult:
        from pim.engine.pipeline.final import run_final

        return run_final(ctx, inputs["provision"], staging / DISK)


STAGES: tuple[Stage, ...] = (InstallStage(), BootStage(), ProvisionStage(), FinalStage())


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
