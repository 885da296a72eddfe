"""A shared build cache in S3-compatible object storage (AWS S3, MinIO, Ceph RGW).

Stage keys are content hashes of every input, so an object built on one machine is
the same build on any other. `open_remote` reads the settings (`cache:` in pim.yaml
over the per-user file's); the build loop pulls an object on a local miss and pushes
what a build produced (`transfer`). Nothing is imported from boto3 until a cache is
configured.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pim.engine.config.spec import Config
    from pim.engine.remote.s3 import Bucket


def open_remote(cfg: "Config | None", enabled: bool = True, user_file: Path | None = None) -> "Bucket | None":
    """The remote cache `cfg` (and the per-user config file) name, or None when none
    is configured or `enabled` is False (`--no-remote-cache`). `cfg` None: the
    per-user file alone.

    user_file: the per-user config (default `paths.user_config_file()`), YAML with a
    `cache:` mapping. Raises InputError naming the file for a bad per-user config.
    Makes no network call.
    """
    if not enabled:
        return None
    import yaml
    from pydantic import ValidationError

    from pim.engine.config.spec import load_yaml
    from pim.engine.errors import InputError
    from pim.engine.paths import user_config_file
    from pim.engine.remote.spec import merge

    path = user_file or user_config_file()
    user: dict | None = None
    if path.is_file():
        try:
            data = load_yaml(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise InputError(f"{path}: cannot read it ({e}); fix or remove the file") from None
        user = data.get("cache") if isinstance(data, dict) else None
    project = cfg.cache.model_dump(exclude_unset=True) if cfg is not None and cfg.cache is not None else None
    try:
        spec = merge(user, project)
    except ValidationError as e:
        problems = "; ".join(f"cache.{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise InputError(f"{path}: {problems}") from None
    if spec is None:
        return None
    from pim.engine.remote.s3 import Bucket

    return Bucket(spec)
