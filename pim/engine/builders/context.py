"""The build context a remote builder needs: the resolved spec of one image and every
file it references, content-addressed.

The client sends the spec as data (secrets included: it goes over the SSH channel's
stdin, never on a command line or to disk on the client) with each local file
reference replaced by `files/<sha256>/<name>`; the builder keeps each file once
under `inputs/sha256/<digest>` of its store and links the context to them. Keys hash
file contents, never paths, so the builder computes the same stage keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from pydantic import SecretStr

from pim.engine.config.spec import Config, ImageSpec

# Where an ImageSpec refers to local files: (path into its data, is a mapping of them).
_REFS: tuple[tuple[tuple[str, ...], bool], ...] = (
    (("source", "iso"), False),
    (("installer", "template"), False),
    (("installer", "answer_file"), False),
    (("installer", "files"), True),
    (("installer", "template_files"), True),
)
_STEP_REFS = ("script", "source")


def _plain(obj: Any) -> Any:
    """model_dump(mode="python") output made JSON-able, secrets revealed."""
    if isinstance(obj, SecretStr):
        return obj.get_secret_value()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "value") and not isinstance(obj, (str, int, float, bool)):  # an Enum
        return obj.value
    return obj


def _slots(data: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str]]:
    """(mapping, key) for every place in spec data that holds a local file path."""
    for path, many in _REFS:
        node: Any = data
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or node.get(path[-1]) is None:
            continue
        if many:
            yield from ((node[path[-1]], k) for k in node[path[-1]])
        else:
            yield node, path[-1]
    for step in data.get("provision", []):
        for k in _STEP_REFS:
            if step.get(k) is not None:
                yield step, k


@dataclass
class Context:
    """One image's build context: `spec` (JSON-able, file paths rewritten) and `files`
    ({context path: local file}) with `digests` ({context path: sha256 hex}) and
    `names` ({context path: the path as written in the config}, so the build names its
    inputs as the user knows them)."""

    image: str
    spec: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # {context path: the path as the config wrote it}

    def blobs(self) -> dict[str, Path]:
        """{sha256: local file}, each content once."""
        return {self.digests[p]: f for p, f in self.files.items()}


def make(cfg: Config, name: str, iso_sha256: str | None) -> Context:
    """The context of image `name`. `iso_sha256`: the digest of a local ISO (already
    known to the build); None for a URL source, which the builder downloads itself.
    Raises InputError when a referenced file cannot be read."""
    from pim.engine.pipeline.keys import file_digest

    spec: ImageSpec = cfg.image(name)
    data = _plain(spec.model_dump(mode="python", exclude={"builder"}))
    ctx = Context(name, data)
    for node, k in _slots(data):
        if k == "iso" and spec.source.is_url:
            continue
        local = cfg.path(node[k])
        digest = iso_sha256 if k == "iso" and iso_sha256 else file_digest(local)
        rel = f"files/{digest}/{local.name}"
        ctx.files[rel], ctx.digests[rel], ctx.names[rel] = local, digest, str(node[k])
        node[k] = rel
    return ctx


def materialize(root: Path, digests: dict[str, str], blob: "Any") -> None:
    """Lay out a context under `root` (on the builder): each `files/<digest>/<name>` a
    symlink to `blob(digest)`, the store's copy of that content."""
    for rel, digest in digests.items():
        target = root / rel
        if target.parent.name != digest or ".." in Path(rel).parts or Path(rel).is_absolute():
            raise ValueError(f"not a context path: {rel!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(blob(digest))
