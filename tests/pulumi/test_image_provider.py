"""ImageProvider's methods called directly (layer a): check, diff, create, read, update, delete."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pim.engine.store.objects import Store
from pim.pulumi_provider.image import ImageProvider
from pim.pulumi_provider.inputs import UNKNOWN
from tests.pulumi.conftest import Project

P = ImageProvider()


def failures(props: dict) -> list[tuple[str, str]]:
    return [(f.property, f.reason) for f in P.check({}, props).failures]


def created(project: Project, **overrides: object) -> dict:
    result = P.create(project.image_inputs(**overrides))
    assert result.id == project.key
    return result.outs


def test_unknowns_are_recognised_as_the_sdk_hands_them_over() -> None:
    from pulumi.runtime import rpc

    from pim.pulumi_provider.inputs import has_unknown

    assert UNKNOWN == rpc.UNKNOWN
    from tests.pulumi.grpc_client import to_struct

    wire = to_struct({"a": rpc.UNKNOWN, "b": {"c": [rpc.UNKNOWN]}, "d": "x"})
    got = rpc.deserialize_properties(wire, keep_unknowns=True)  # what Check and Diff receive
    assert has_unknown(got["a"]) and has_unknown(got["b"]) and not has_unknown(got["d"])


def test_check_accepts_a_good_config_and_drops_output_names(project: Project) -> None:
    result = P.check({}, {**project.image_inputs(), "content_key": None, "path": None, "__provider": "x"})
    assert result.failures == []
    assert "content_key" not in result.inputs and "path" not in result.inputs


def test_check_returns_a_failure_per_bad_field_of_an_inline_spec(project: Project) -> None:
    spec = {"source": {"iso": "installer.iso"}, "disk_size": "tiny", "cpus": 0, "colour": "blue",
            "installer": {"template": "missing.txt", "boot": {"kernel": "/k", "initrd": "/i"}}}
    got = dict(failures({"spec": spec, "base_dir": str(project.folder), "image": "web"}))
    assert set(got) == {"spec.disk_size", "spec.cpus", "spec.colour", "spec.installer.template"}
    assert "'tiny' is not a size" in got["spec.disk_size"]
    assert "unknown key" in got["spec.colour"]
    assert "missing.txt" in got["spec.installer.template"]


def test_check_names_the_file_and_the_dotted_path_for_a_config(project: Project, tmp_path: Path) -> None:
    bad = project.config.read_text().replace("installer:", "disk_size: 12\n    installer:", 1)
    (project.folder / "bad.yaml").write_text(bad)
    got = failures(project.image_inputs(config=str(project.folder / "bad.yaml")))
    assert len(got) == 1 and got[0][0] == "config"
    assert "bad.yaml" in got[0][1] and "images.web.disk_size" in got[0][1]


def test_check_reports_an_unknown_image_name_and_bad_tags(project: Project) -> None:
    got = dict(failures(project.image_inputs(image="nope", tags={"pim:key": "x", "n": 3})))
    assert "defined: web" in got["image"]
    assert "PIM's own" in got["tags.pim:key"] and "string" in got["tags.n"]
    assert failures({"image": "web"}) == [("config", "give config (a pim.yaml) or spec (an inline image spec)")]


def test_check_with_unknown_inputs_validates_nothing_yet(project: Project) -> None:
    assert failures(project.image_inputs(config=UNKNOWN)) == []


def test_diff_unchanged_inputs_report_no_change_and_ignore_the_provider(project: Project) -> None:
    outs = {**created(project), "__provider": "old pickle"}
    diff = P.diff(project.key, outs, {**project.image_inputs(), "__provider": "a different pickle"})
    assert diff.changes is False and diff.replaces == []


def test_diff_replaces_when_a_referenced_script_changes(project: Project) -> None:
    outs = created(project)
    (project.folder / "scripts" / "setup.sh").write_text("echo something else\n")
    diff = P.diff(project.key, outs, project.image_inputs())
    assert diff.changes is True and diff.delete_before_replace is False
    # the replacement names the input that changed, as a path into the input_digests output
    assert diff.replaces == ["content_key", 'input_digests["provision: scripts/setup.sh content"]']
    assert outs["input_digests"]["provision: scripts/setup.sh content"] == hashlib.sha256(b"echo setting up\n").hexdigest()


@pytest.mark.parametrize("name, new, changed", [
    ("installer.iso", "another ISO", "install: ISO sha256"),
    ("answer.txt", "hostname={{ hostname }}\n", "install: answer template answer.txt content"),
])
def test_diff_names_a_changed_iso_or_answer_template(project: Project, name: str, new: str, changed: str,
                                                     capfd: pytest.CaptureFixture) -> None:
    outs = created(project)
    (project.folder / name).write_text(new)
    assert P.diff(project.key, outs, project.image_inputs()).replaces == ["content_key", f'input_digests["{changed}"]']
    assert f"rebuild: {changed} changed" in capfd.readouterr().err


def test_diff_ignores_what_cannot_change_the_bytes(project: Project) -> None:
    outs = created(project)
    text = project.config.read_text()
    moved = project.folder.parent / "elsewhere"
    moved.mkdir()
    for name in ("installer.iso", "answer.txt"):
        (moved / name).write_bytes((project.folder / name).read_bytes())
    (moved / "scripts").mkdir()
    (moved / "scripts" / "setup.sh").write_bytes((project.folder / "scripts" / "setup.sh").read_bytes())
    # more memory only changes the boot snapshot, not the image; a moved project is the same image
    (moved / "pim.yaml").write_text(text.replace("installer:", "memory: 4G\n    installer:", 1))
    diff = P.diff(project.key, outs, project.image_inputs(config=str(moved / "pim.yaml")))
    assert diff.changes is False


def test_diff_a_new_ssh_password_is_a_new_image(project: Project) -> None:
    outs = created(project)
    assert P.diff(project.key, outs, project.image_inputs(ssh_password="hunter22")).replaces == [
        "content_key", 'input_digests["install: SSH password"]']


def test_diff_tags_update_in_place(project: Project) -> None:
    outs = created(project)
    diff = P.diff(project.key, outs, project.image_inputs(tags={"team": "infra"}))
    assert diff.changes is True and diff.replaces == []
    updated = P.update(project.key, outs, project.image_inputs(tags={"team": "infra"})).outs
    assert updated["tags"] == {"team": "infra"} and updated["content_key"] == project.key


def test_diff_unknown_inputs_in_a_preview_replace(project: Project) -> None:
    outs = created(project)
    diff = P.diff(project.key, outs, project.image_inputs(spec={"source": UNKNOWN}, config=None))
    assert diff.changes is True and diff.replaces == ["spec"]


def test_the_ssh_password_is_in_the_key_but_never_in_outputs(project: Project, capfd: pytest.CaptureFixture) -> None:
    from pim.pulumi_provider.inputs import image_config
    from tests.pulumi.conftest import VIRTUAL, make_disk, standard_writes
    from tests.pulumi.seed import seed_build

    props = project.image_inputs(ssh_password="hunter22-secret")
    disk = make_disk(project.folder / "disk2", "web", VIRTUAL, standard_writes())
    key = seed_build(image_config(props)[0], "web", project.cache, disk.image.path, VIRTUAL)
    result = P.create(props)
    assert result.id == key != project.key
    assert "hunter22-secret" not in repr(result.outs) and "ssh_password" not in result.outs
    assert "hunter22-secret" not in "".join(capfd.readouterr())


def test_create_outputs(project: Project) -> None:
    outs = created(project)
    assert Path(outs["path"]).is_file() and Path(outs["manifest_path"]).is_file()
    assert outs["format"] == "qcow2" and outs["arch"] == "x86_64" and outs["firmware"] == "bios"
    assert len(outs["sha256"]) == 64 and outs["size"] > 0
    assert set(outs["stage_keys"]) == {"install", "provision", "final"}
    assert outs["stage_keys"]["final"] == project.key
    assert outs["image"] == "web" and outs["config"] == str(project.config)


def test_read_reports_a_missing_artifact_as_gone(project: Project) -> None:
    outs = created(project)
    assert P.read(project.key, outs).id == project.key
    import shutil

    shutil.rmtree(Store(project.cache).object(project.key))
    gone = P.read(project.key, outs)
    assert gone.id == "" and gone.outs == {}


def test_delete_keeps_the_artifact_unless_asked(project: Project) -> None:
    outs = created(project)
    P.delete(project.key, outs)
    assert Store(project.cache).has(project.key)
    P.delete(project.key, {**outs, "delete_artifact": True})
    assert not Store(project.cache).has(project.key)
    P.delete(project.key, {**outs, "delete_artifact": True})  # already gone is fine
