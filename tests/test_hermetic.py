"""The suite's isolation (tests/conftest.py): PIM's XDG folders point into the session's
own folder, and a run that writes the user's PIM cache or leaves the environment
changed fails. Checked by running real pytest sessions with that conftest."""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import textwrap
import threading
from pathlib import Path

import pytest

from tests.conftest import _changes, fingerprint, user_caches

pytest_plugins = ["pytester"]
CONFTEST = Path(__file__).with_name("conftest.py")


def test_pim_folders_point_into_the_sessions_own_folder() -> None:
    real = Path.home().resolve()
    for name in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_RUNTIME_DIR"):
        folder = Path(os.environ[name]).resolve()
        assert folder.is_dir() and real not in folder.parents, name
    assert "PIM_CACHE_DIR" not in os.environ
    assert Path(os.environ["XDG_CACHE_HOME"]) / "pim" not in user_caches({})


def test_fingerprint_sees_creation_change_and_removal(tmp_path: Path) -> None:
    cache = tmp_path / "pim"
    before = fingerprint(cache)
    assert before is None
    (cache / "objects").mkdir(parents=True)
    (cache / "hashes.json").write_text("{}")
    created = fingerprint(cache)
    assert _changes(before, created) == "created"
    assert _changes(created, fingerprint(cache)) == ""
    os.utime(cache / "hashes.json", ns=(1, 1))
    assert _changes(created, fingerprint(cache)) == "changed: hashes.json"
    shutil.rmtree(cache)
    assert _changes(created, fingerprint(cache)) == "removed"


def _session(pytester: pytest.Pytester, body: str) -> pytest.RunResult:
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(test_inner=textwrap.dedent(body))
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)


def test_a_run_that_writes_the_users_pim_cache_fails(pytester: pytest.Pytester) -> None:
    # pytester gives the inner session a HOME of its own: this never reaches the real one
    result = _session(pytester, """
        from pathlib import Path

        def test_writes_home_cache():
            folder = Path.home() / ".cache" / "pim"
            folder.mkdir(parents=True)
            (folder / "hashes.json").write_text("{}")
    """)
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*HERMETIC: */.cache/pim was created during the run*"])


def test_a_run_that_writes_pims_cache_through_xdg_passes(pytester: pytest.Pytester) -> None:
    result = _session(pytester, """
        import os
        from pathlib import Path

        def test_writes_xdg_cache():
            folder = Path(os.environ["XDG_CACHE_HOME"]) / "pim"
            folder.mkdir(parents=True)
            (folder / "hashes.json").write_text("{}")
    """)
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK


def test_a_test_leaving_the_environment_or_cwd_changed_fails_and_is_undone(pytester: pytest.Pytester) -> None:
    result = _session(pytester, """
        import os

        def test_sets_env():
            os.environ["PIM_LEAK"] = "1"

        def test_moves(tmp_path):
            os.chdir(tmp_path)

        def test_env_was_restored():
            assert "PIM_LEAK" not in os.environ

        def test_monkeypatch_is_fine(monkeypatch, tmp_path):
            monkeypatch.setenv("PIM_LEAK", "2")
            monkeypatch.chdir(tmp_path)
    """)
    result.assert_outcomes(passed=4, errors=2)
    result.stdout.fnmatch_lines(["*test_sets_env changed the environment (PIM_LEAK) without restoring it*",
                                 "*test_moves changed the working directory without restoring it*"])


def test_mirror_probe_tells_a_silent_server_from_one_that_answers() -> None:
    from tests.helpers import mirror_unreachable

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: the connection is refused
        reason = mirror_unreachable(f"http://127.0.0.1:{port}/debian/pool/main/h/hello/hello.deb")
    assert reason is not None and "ConnectionRefusedError" in reason
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        try:  # it answers HEAD with 501: reachable, whatever it thinks of the request
            assert mirror_unreachable(f"http://127.0.0.1:{httpd.server_address[1]}/debian/x.deb") is None
        finally:
            httpd.shutdown()
