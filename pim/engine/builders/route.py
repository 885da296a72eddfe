"""Where a build runs: one pure decision, with its reason.

The founding table (design.md, "Principles" 4), for builds nobody routed by hand:

    host                target    goes to
    Mac arm64           aarch64   local, HVF
    Mac arm64           x86_64    a builder with hardware acceleration for x86_64 (a KVM host)
    Linux x86_64        x86_64    local, KVM
    Linux x86_64        aarch64   an aarch64 builder when one is configured

Generalized: a build stays on this host when its accelerator verdict for the target
is hardware (KVM, HVF); otherwise it goes to the fastest (highest `speed_factor`)
builder that declares hardware acceleration for the target; with none, it runs here
under TCG, with a warning when the target is a foreign architecture (emulated
instruction by instruction). Builders that declare only `tcg` are used when named.

Overrides, strongest first: `--local`, `--builder NAME`, the image's `builder:`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Mapping

from pim.engine.builders.spec import HARDWARE, LOCAL, Builder
from pim.engine.errors import InputError

# What people see under TCG against KVM for the same guest: QEMU's TCG translates each
# guest instruction; a build's boot and package work typically take 5 to 20 times as long.
TCG_SLOWDOWN = "typically 5 to 20 times slower than with KVM or HVF"


class RoutingError(InputError):
    """No builder can take the build as asked (unknown name, architecture it does not build)."""


@dataclass(frozen=True)
class Host:
    """The machine PIM runs on: `os` "linux" or "darwin", `arch` "x86_64" or "aarch64"."""

    os: str
    arch: str

    @classmethod
    def this(cls) -> "Host":
        from pim.engine.platforms import arch_name

        return cls(os.uname().sysname.lower(), arch_name())

    def __str__(self) -> str:
        return f"{'Mac' if self.os == 'darwin' else self.os.capitalize()} {self.arch}"


@dataclass(frozen=True)
class Route:
    """The decision: run on `builder` under `accel`, because `reason`; `warning` when
    the user should know the build will be slow."""

    builder: Builder
    accel: str
    reason: str
    warning: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"builder": self.builder.name, "address": self.builder.address, "accel": self.accel,
                "reason": self.reason, "warning": self.warning}


def route(host: Host, arch: str, local_accel: Callable[[], str], builders: Mapping[str, Builder], *,
          image_builder: str | None = None, override: str | None = None, force_local: bool = False,
          resolve_local: bool = True) -> Route:
    """Decide where an image for `arch` ("x86_64" | "aarch64") is built.

    local_accel: returns this host's accelerator verdict for `arch` ("kvm" | "hvf" |
    "tcg"); called at most once, and only when the decision depends on it or, with
    `resolve_local`, to name the accelerator of a local build (probing can take
    seconds; without `resolve_local` such a route says "auto" and the build probes
    when it starts, after its cache look-ups). builders: every configured builder by
    name, `local` included. Raises RoutingError for an unknown builder name or one
    that does not build `arch`.
    """
    local = builders.get(LOCAL) or Builder(LOCAL, {})

    def here(why: str) -> Route:
        return _local(host, arch, local, local_accel if resolve_local else lambda: "auto", why)

    if force_local:
        return here("--local asked for this host")
    for name, why in ((override, "--builder"), (image_builder, "the image's builder:")):
        if name is None:
            continue
        if name == LOCAL:
            return here(f"{why} {LOCAL}")
        chosen = builders.get(name)
        if chosen is None:
            known = ", ".join(sorted(builders)) or "none"
            raise RoutingError(f"{why} names builder {name!r}, which is not configured (builders: {known}); "
                               "declare it under builders: in pim.yaml or in the per-user builders.yaml")
        if arch not in chosen.systems:
            raise RoutingError(f"builder {name!r} does not build {arch} (its systems: "
                               f"{', '.join(chosen.systems) or 'none'}); pick another builder or add {arch} "
                               "to its systems")
        return Route(chosen, chosen.systems[arch], f"{why} {name}")
    remote = sorted((b for b in builders.values() if not b.is_local and b.systems.get(arch) in HARDWARE),
                    key=lambda b: (-b.speed_factor, b.name))
    if arch == host.arch and not remote and not resolve_local:
        return Route(local, "auto", f"{host} host builds {arch} here (no builder declares hardware acceleration "
                                    f"for it); the accelerator is probed when the build starts")
    if arch == host.arch:
        verdict = local_accel()
        if verdict in HARDWARE:
            return Route(local, verdict, f"{host} host builds {arch} here under {verdict}")
    else:
        verdict = "tcg"  # a foreign architecture is always emulated here
    if remote:
        best = remote[0]
        return Route(best, best.systems[arch], f"{host} host has no hardware acceleration for {arch} "
                                               f"(here: {verdict}); builder {best.name} builds it under "
                                               f"{best.systems[arch]}" + (f" (fastest of {len(remote)})"
                                                                          if len(remote) > 1 else ""))
    if arch != host.arch:
        return Route(local, "tcg", f"{host} host, {arch} image, no builder with KVM or HVF for {arch}: "
                                   "emulated here under TCG",
                     warning=f"{arch} is emulated under TCG on this {host.arch} host, {TCG_SLOWDOWN}; "
                             f"configure a builder with systems: {{{arch}: kvm}} to build it natively")
    return Route(local, verdict, f"{host} host builds {arch} here under {verdict} (no hardware acceleration "
                                 "works here and no builder declares it)")


def _local(host: Host, arch: str, local: Builder, local_accel: Callable[[], str], why: str) -> Route:
    if arch != host.arch:
        return Route(local, "tcg", f"{why}: {arch} is emulated under TCG on this {host.arch} host",
                     warning=f"{arch} is emulated under TCG on this {host.arch} host, {TCG_SLOWDOWN}")
    return Route(local, local_accel(), why)
