"""`pim tofu external`: the program behind Terraform's `data "external"`.

The external program protocol: one JSON object whose values are all strings on
stdin; one flat JSON object of strings on stdout; on error, a message on stderr and
a non-zero exit. Query keys:

    config     path to pim.yaml (default pim.yaml, relative to the working directory)
    image      image name (required)
    target     deploy target name (optional): adds the template id or AMI ids
    mode       lookup (default): never builds or deploys, fails when something is missing
               build: builds the image when missing, deploys it when a target is given
    cache_dir  PIM's cache (optional)

Terraform runs the program on every plan, so lookup answers from the cache: the
content key is recomputed from the config and the files it reads (ISO hashes are
memoized), nothing starts QEMU.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO, Any

KEYS = {"config", "image", "target", "mode", "cache_dir", "builder"}
MODES = ("lookup", "build")


class QueryError(Exception):
    pass


def parse_query(text: str) -> dict[str, str]:
    try:
        query = json.loads(text or "{}")
    except ValueError as e:
        raise QueryError(f"the query on stdin is not JSON ({e}): Terraform sends the `query` map") from None
    if not isinstance(query, dict) or not all(isinstance(v, str) for v in query.values()):
        raise QueryError("the query must be a JSON object of strings (the external data source's `query` map)")
    unknown = sorted(set(query) - KEYS)
    if unknown:
        raise QueryError(f"unknown query key(s) {', '.join(unknown)}; known: {', '.join(sorted(KEYS))}")
    if not query.get("image"):
        raise QueryError('the query needs "image": the image name in the config')
    query.setdefault("config", "pim.yaml")
    query["mode"] = query.get("mode") or "lookup"
    if query["mode"] not in MODES:
        raise QueryError(f"mode {query['mode']!r} is not one of {', '.join(MODES)}")
    return query


def _flat(values: dict[str, Any]) -> dict[str, str]:
    """Terraform's result map holds strings only: numbers as text, maps as key.subkey."""
    out: dict[str, str] = {}
    for k, v in values.items():
        if isinstance(v, dict):
            out.update({f"{k}.{sub}": str(val) for sub, val in v.items()})
        elif v is not None:
            out[k] = str(v)
    return out


def _progress(event: Any) -> None:
    if event.kind in ("stage-begin", "warning"):
        print(f"pim: {event.stage or ''} {event.message}".rstrip(), file=sys.stderr)


def run(query: dict[str, str], events: Any) -> dict[str, str]:
    from pim.engine.pipeline import build as engine
    from pim.engine.pipeline.build import image_outputs
    from pim.engine.config.spec import load_config
    from pim.engine.paths import cache_dir
    from pim.engine.remote import open_remote
    from pim.engine.store.objects import Store

    store = Store(Path(query["cache_dir"]).resolve() if query.get("cache_dir") else cache_dir())
    cfg = load_config(Path(query["config"]))
    name, building = query["image"], query["mode"] == "build"
    target = None
    if query.get("target"):
        if query["target"] not in cfg.targets:
            known = ", ".join(sorted(cfg.targets)) or "none"
            raise QueryError(f"no target {query['target']!r} in {query['config']}; defined: {known}")
        target = cfg.targets[query["target"]]
    found = engine.lookup(cfg, name, store)
    if found is None and not building:
        raise QueryError(f"image {name!r} is not built for its current inputs: run `pim build {name} "
                         f"--config {query['config']}`, or set mode = \"build\" in the query")
    password = cfg.images[name].ssh.password
    if password is not None:
        events.add_secret(password.get_secret_value())
    if found is None:
        from pim.engine import builders

        result = builders.build(cfg, name, events, store=store, builders=builders.load(cfg),
                                remote=open_remote(cfg), override=query.get("builder"), fetch=True)
    else:
        result = found
    out = {k: v for k, v in image_outputs(result.manifest_path).items()
           if k not in ("stage_keys", "created", "input_digests")}
    out = {"image": name, "key": out.pop("content_key")} | out | {"built_on": result.builder}
    if target is not None:
        out |= _deployment(query, cfg, target, result, building, events)
    return _flat(out)


def _deployment(query: dict[str, str], cfg: Any, target: Any, result: Any, building: bool, events: Any) -> dict:
    from pim.engine import deploy
    from pim.engine.deploy.model import BuiltImage

    image = BuiltImage.from_manifest(result.manifest(), result.path)
    kw = {"target_name": query["target"], "base_dir": cfg.base_dir}
    found = deploy.exists(target, image, events, **kw)
    if found is None and not building:
        raise QueryError(f"build {image.key[:16]} of {image.name!r} is not deployed to {query['target']!r}: "
                         f"run `pim deploy {image.name} --target {query['target']}`, or set mode = \"build\"")
    found = found or deploy.deploy(target, image, events, **kw)
    ids = found.ids(getattr(target, "region", None))
    if "vmid" in ids:
        ids["template_id"] = ids.pop("vmid")
    out: dict[str, Any] = {"target": query["target"], "type": found.type} | ids
    return out


def main(stdin: IO[str], stdout: IO[str], stderr: IO[str]) -> int:
    from pim.engine.errors import PimError
    from pim.engine.events import Emitter

    events = Emitter(_progress)
    try:
        result = run(parse_query(stdin.read()), events)
    except (QueryError, PimError) as e:
        print(f"pim tofu external: {events.redact(str(e))}", file=stderr)
        return 2 if isinstance(e, QueryError) else getattr(e, "exit_code", 1)
    except KeyboardInterrupt:
        print("pim tofu external: interrupted", file=stderr)
        return 130
    json.dump(result, stdout, sort_keys=True)
    stdout.write("\n")
    return 0
