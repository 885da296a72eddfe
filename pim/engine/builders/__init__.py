"""Builders: the machines that build, where each build goes, and builds run elsewhere.

`load` reads `builders:` from pim.yaml over the per-user builders file; `route.route`
decides where an image is built (and why); `build` runs it there: locally through
the engine, or on a remote builder over SSH (`remote`), holding one of the
builder's `max_jobs` slots (`slots`) while it builds.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pim.engine.builders.route import Route
    from pim.engine.builders.spec import Builder
    from pim.engine.config.spec import Config
    from pim.engine.events import Emitter
    from pim.engine.pipeline.build import BuildResult
    from pim.engine.remote.s3 import Bucket
    from pim.engine.store.objects import Store


def load(cfg: "Config | None", user_file: Path | None = None) -> dict[str, "Builder"]:
    """Every configured builder by name, `local` always among them.

    user_file: the per-user builders file (default `paths.user_builders_file()`),
    YAML with a `builders:` mapping. Raises InputError naming the file and entry for
    a bad one. Makes no connection.
    """
    import yaml
    from pydantic import ValidationError

    from pim.engine.builders.spec import LOCAL, BuildersFile, merge, resolve
    from pim.engine.config.spec import load_yaml
    from pim.engine.errors import InputError
    from pim.engine.paths import user_builders_file

    path = user_file or user_builders_file()
    user: dict[str, Any] = {}
    if path.is_file():
        try:
            user = BuildersFile.model_validate(load_yaml(path.read_text()) or {}).builders
        except (OSError, yaml.YAMLError, ValidationError) as e:
            raise InputError(f"{path}: {_why(e)}; fix or remove the file") from None
    project = {n: b.model_dump(exclude_unset=True) for n, b in (cfg.builders if cfg else {}).items()}
    try:
        specs = merge(user, project)
        out = {name: resolve(name, spec, {}) for name, spec in specs.items()}
    except (ValidationError, ValueError) as e:
        raise InputError(f"builders ({path} and pim.yaml): {_why(e)}") from None
    out.setdefault(LOCAL, resolve(LOCAL, specs.get(LOCAL) or _default_local(), {}))
    return out


def _default_local() -> Any:
    from pim.engine.builders.spec import BuilderSpec

    return BuilderSpec()


def _why(e: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(e, ValidationError):
        return "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg'].removeprefix('Value error, ')}"
                         for err in e.errors())
    return str(e)


def decide(cfg: "Config", name: str, builders: dict[str, "Builder"], *, override: str | None = None,
           force_local: bool = False, resolve_local: bool = True) -> "Route":
    """Where image `name` is built (see `route.route`); probes this host's accelerator
    only when the decision depends on it, or (`resolve_local`) to name the accelerator
    of a local build. Raises RoutingError, InputError."""
    from pim.engine.builders.route import Host, route
    from pim.engine.qemu import accel

    spec = cfg.image(name)
    return route(Host.this(), spec.arch.value, lambda: accel.choose(spec.arch.value, spec.accel.value).accel,
                 builders, image_builder=spec.builder, override=override, force_local=force_local,
                 resolve_local=resolve_local)


def build(cfg: "Config", name: str, events: "Emitter", *, store: "Store", builders: dict[str, "Builder"],
          remote: "Bucket | None" = None, force: bool = False, override: str | None = None,
          force_local: bool = False, fetch: bool | None = None) -> "BuildResult":
    """Route image `name` and build it there. Local builds hold one of `local`'s
    slots while they build; remote ones hold the builder's. `fetch` False leaves a
    remote artifact on its builder (None: the builder's `fetch` setting). Raises what `pipeline.build.build` and
    `remote.build` raise, and RoutingError."""
    from pim.engine.pipeline.build import build as local_build

    # A local build probes its accelerator itself, after its cache look-ups: a cache hit needs none.
    chosen = decide(cfg, name, builders, override=override, force_local=force_local, resolve_local=False)
    events.emit("route", None, chosen.reason, **chosen.to_json())
    if chosen.warning:
        events.warning(None, chosen.warning)
    if chosen.builder.is_local:
        return local_build(cfg, name, events, store=store, force=force, remote=remote,
                           max_jobs=chosen.builder.max_jobs)
    if not force:  # built here already (fetched earlier): no connection needed
        from pim.engine.errors import PimError
        from pim.engine.pipeline.build import _result, lookup

        try:
            found = lookup(cfg, name, store)
        except PimError:  # this machine cannot even compute the keys (no qemu-img): the builder can
            found = None
        if found is not None:
            events.log(None, f"{name} is in the local store already ({found.key[:12]}); "
                             f"{chosen.builder.name} is not asked")
            return _result(store, name, found.key, cached=True)  # recorded as the image's newest build
    from pim.engine.builders import remote as remote_build

    return remote_build.build(cfg, name, events, store=store, builder=chosen.builder, force=force,
                              fetch_result=chosen.builder.fetch if fetch is None else fetch)
