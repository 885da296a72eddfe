"""Every row of the routing table and each override, against `route()` itself."""

from __future__ import annotations

import pytest

from pim.engine.builders.route import TCG_SLOWDOWN, Host, RoutingError, route
from pim.engine.builders.spec import LOCAL, Builder

MAC = Host("darwin", "aarch64")
LINUX = Host("linux", "x86_64")


def _builders(*remote: Builder, local_jobs: int = 1) -> dict[str, Builder]:
    return {LOCAL: Builder(LOCAL, {}, local_jobs), **{b.name: b for b in remote}}


KVM_X86 = Builder("pve", {"x86_64": "kvm"}, host="pve.lan", user="pim")
ARM = Builder("arm", {"aarch64": "kvm"}, host="arm.lan")
ARM_FAST = Builder("arm-fast", {"aarch64": "kvm"}, speed_factor=4.0, host="arm2.lan")
ARM_TCG = Builder("arm-tcg", {"aarch64": "tcg"}, host="big.lan")


class Probe:
    """A local accelerator verdict that records whether routing asked for it."""

    def __init__(self, verdict: str):
        self.verdict, self.calls = verdict, 0

    def __call__(self) -> str:
        self.calls += 1
        return self.verdict


def test_mac_arm64_builds_aarch64_here_under_hvf() -> None:
    r = route(MAC, "aarch64", Probe("hvf"), _builders(KVM_X86, ARM))
    assert (r.builder.name, r.accel, r.warning) == (LOCAL, "hvf", None)
    assert "Mac aarch64" in r.reason and "hvf" in r.reason


def test_mac_sends_x86_64_to_the_kvm_host() -> None:
    probe = Probe("hvf")
    r = route(MAC, "x86_64", probe, _builders(KVM_X86, ARM))
    assert (r.builder.name, r.accel) == ("pve", "kvm")
    assert "pve" in r.reason and "no hardware acceleration for x86_64" in r.reason
    assert probe.calls == 0, "a foreign architecture needs no probe: it is always TCG here"


def test_linux_x86_64_builds_x86_64_here_under_kvm() -> None:
    r = route(LINUX, "x86_64", Probe("kvm"), _builders(KVM_X86, ARM))
    assert (r.builder.name, r.accel) == (LOCAL, "kvm")


def test_linux_sends_aarch64_to_the_arm_builder() -> None:
    r = route(LINUX, "aarch64", Probe("kvm"), _builders(KVM_X86, ARM))
    assert (r.builder.name, r.accel, r.warning) == ("arm", "kvm", None)


def test_linux_aarch64_without_a_builder_is_emulated_here_with_a_warning() -> None:
    r = route(LINUX, "aarch64", Probe("kvm"), _builders(KVM_X86))
    assert (r.builder.name, r.accel) == (LOCAL, "tcg")
    assert r.warning is not None and TCG_SLOWDOWN in r.warning and "aarch64: kvm" in r.warning


def test_a_tcg_only_builder_is_not_chosen_by_default() -> None:
    r = route(LINUX, "aarch64", Probe("kvm"), _builders(ARM_TCG))
    assert r.builder.name == LOCAL and r.warning


def test_the_fastest_hardware_builder_wins() -> None:
    r = route(LINUX, "aarch64", Probe("kvm"), _builders(ARM, ARM_FAST))
    assert r.builder.name == "arm-fast" and "fastest of 2" in r.reason


def test_broken_local_kvm_sends_x86_64_to_a_kvm_builder() -> None:
    # /dev/kvm present but hung (as on this CI machine): the probe says tcg.
    r = route(LINUX, "x86_64", Probe("tcg"), _builders(KVM_X86))
    assert (r.builder.name, r.accel) == ("pve", "kvm") and "here: tcg" in r.reason


def test_broken_local_kvm_and_no_builder_stays_here_under_tcg() -> None:
    r = route(LINUX, "x86_64", Probe("tcg"), _builders())
    assert (r.builder.name, r.accel, r.warning) == (LOCAL, "tcg", None)
    assert "no hardware acceleration works here" in r.reason


def test_local_override_beats_everything() -> None:
    probe = Probe("kvm")
    r = route(LINUX, "x86_64", probe, _builders(KVM_X86), image_builder="pve", override="pve", force_local=True)
    assert (r.builder.name, r.accel) == (LOCAL, "kvm") and "--local" in r.reason and probe.calls == 1


def test_local_override_for_a_foreign_arch_warns() -> None:
    r = route(LINUX, "aarch64", Probe("kvm"), _builders(ARM), force_local=True)
    assert (r.builder.name, r.accel) == (LOCAL, "tcg") and r.warning and TCG_SLOWDOWN in r.warning


def test_builder_option_beats_the_image_setting() -> None:
    r = route(LINUX, "aarch64", Probe("kvm"), _builders(ARM, ARM_FAST), image_builder="arm-fast", override="arm")
    assert r.builder.name == "arm" and r.reason == "--builder arm"


def test_image_builder_beats_the_table() -> None:
    probe = Probe("kvm")
    r = route(LINUX, "x86_64", probe, _builders(KVM_X86), image_builder="pve")
    assert r.builder.name == "pve" and "builder:" in r.reason and probe.calls == 0


def test_image_builder_local_builds_here() -> None:
    r = route(LINUX, "x86_64", Probe("kvm"), _builders(KVM_X86), image_builder=LOCAL)
    assert r.builder.name == LOCAL and r.accel == "kvm"


def test_a_named_tcg_builder_is_used() -> None:
    r = route(LINUX, "aarch64", Probe("kvm"), _builders(ARM_TCG), override="arm-tcg")
    assert (r.builder.name, r.accel) == ("arm-tcg", "tcg")


def test_unknown_builder_is_an_input_error_listing_the_known_ones() -> None:
    with pytest.raises(RoutingError, match=r"'nope', which is not configured \(builders: arm, local\)"):
        route(LINUX, "aarch64", Probe("kvm"), _builders(ARM), override="nope")


def test_builder_that_does_not_build_the_arch_is_refused() -> None:
    with pytest.raises(RoutingError, match=r"builder 'pve' does not build aarch64 \(its systems: x86_64\)"):
        route(LINUX, "aarch64", Probe("kvm"), _builders(KVM_X86), image_builder="pve")


def test_a_build_routed_here_leaves_the_probe_to_the_build() -> None:
    probe = Probe("kvm")
    r = route(LINUX, "x86_64", probe, _builders(ARM), resolve_local=False)
    assert (r.builder.name, r.accel, probe.calls) == (LOCAL, "auto", 0)
    r = route(LINUX, "x86_64", probe, _builders(ARM), force_local=True, resolve_local=False)
    assert (r.builder.name, r.accel, probe.calls) == (LOCAL, "auto", 0)
    # with a builder that could take it, the verdict decides: the probe runs
    r = route(LINUX, "x86_64", probe, _builders(KVM_X86), resolve_local=False)
    assert (r.builder.name, r.accel, probe.calls) == (LOCAL, "kvm", 1)
