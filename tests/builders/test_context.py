"""A build context sent to a builder gives the builder the same stage keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from pim.engine.builders.context import make, materialize
from pim.engine.config.spec import parse_config
from pim.engine.pipeline.build import content_keys
from pim.engine.store.objects import Store


def _config(tmp_path: Path):
    src = tmp_path / "project"
    (src / "scripts").mkdir(parents=True)
    (src / "installer.iso").write_bytes(b"an installer" * 100)
    (src / "answer.txt").write_text("hostname={{ hostname }}\n")
    (src / "extra.cfg").write_text("served as is")
    (src / "scripts" / "hello.sh").write_text("echo hello\n")
    (src / "motd").write_text("welcome")
    data = {"images": {"web": {
        "source": {"iso": "installer.iso"},
        "builder": "somewhere",
        "installer": {"template": "answer.txt", "files": {"extra.cfg": "extra.cfg"},
                      "boot": {"kernel": "/k", "initrd": "/i"}},
        "ssh": {"password": "s3cret-pass"},
        "provision": [{"type": "shell", "script": "scripts/hello.sh"},
                      {"type": "file", "source": "motd", "destination": "/etc/motd"}],
    }}}
    return parse_config(data, src)


def test_the_builder_computes_the_same_keys(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    store = Store(tmp_path / "store")
    ctx = make(cfg, "web", None)
    # every local file is referenced by content, the ISO included
    assert sorted(Path(p).name for p in ctx.files) == ["answer.txt", "extra.cfg", "hello.sh", "installer.iso",
                                                         "motd"]
    assert ctx.spec["ssh"]["password"] == "s3cret-pass" and "builder" not in ctx.spec
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    for digest, local in ctx.blobs().items():
        (blobs / digest).write_bytes(local.read_bytes())
    there = tmp_path / "context"
    materialize(there, ctx.digests, lambda d: blobs / d)
    remote_cfg = parse_config({"images": {"web": ctx.spec}}, there)
    # the same store (its password salt) on both sides: the same keys
    assert content_keys(remote_cfg, "web", store) == content_keys(cfg, "web", store)
    # a changed script changes the context and the keys
    (cfg.base_dir / "scripts" / "hello.sh").write_text("echo changed\n")
    assert make(cfg, "web", None).digests != ctx.digests


@pytest.mark.parametrize("rel", ["../escape/x", "/etc/passwd", "files/abc/../../x"])
def test_context_paths_cannot_leave_the_context(tmp_path: Path, rel: str) -> None:
    with pytest.raises(ValueError, match="not a context path"):
        materialize(tmp_path / "c", {rel: "abc"}, lambda d: tmp_path / d)


def test_a_builder_with_the_clients_salt_computes_the_clients_keys(tmp_path: Path) -> None:
    """The SSH password enters the keys as a keyed hash with a per-store salt: a builder
    given the client's salt computes the client's keys; its own salt gives others."""
    from pim.engine.pipeline.build import _keys
    from pim.engine.pipeline.keys import store_salt

    cfg = _config(tmp_path)
    client, builder = Store(tmp_path / "client"), Store(tmp_path / "builder")
    spec, iso = cfg.image("web"), "ab" * 32
    mine = _keys(cfg, spec, "web", iso, client)
    assert _keys(cfg, spec, "web", iso, builder, store_salt(client.root)) == mine
    assert _keys(cfg, spec, "web", iso, builder).install != mine.install
