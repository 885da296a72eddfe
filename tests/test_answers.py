import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pim.engine.services.answers import AnswerServer
from pim.engine.events import Emitter, Event


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def test_serves_only_its_files_and_logs_no_secrets(tmp_path: Path) -> None:
    seen: list[Event] = []
    extra = tmp_path / "extra.sh"
    extra.write_text("echo extra\n")
    secret_answer = b"d-i passwd/root-password password TopSecret-42\n"
    with AnswerServer({"answer": secret_answer, "extra.sh": extra}, Emitter(seen.append)) as srv:
        assert srv.url("answer").startswith(f"http://10.0.2.2:{srv.port}/")
        local = srv.url("answer", host="127.0.0.1")
        assert _get(local) == (200, secret_answer)
        assert _get(srv.url("extra.sh", host="127.0.0.1")) == (200, b"echo extra\n")
        assert _get(srv.url("other", host="127.0.0.1"))[0] == 404
        assert _get(f"http://127.0.0.1:{srv.port}/answer")[0] == 404
        assert _get(f"http://127.0.0.1:{srv.port}/wrong-token/answer")[0] == 404
        assert srv.fetched == ["answer", "extra.sh"]
        port, token = srv.port, srv.token
    log = "\n".join(e.message for e in seen)
    assert "GET answer 200" in log and log.count("404") == 3
    assert token not in log and "TopSecret" not in log
    with pytest.raises(OSError):  # stopped with the build
        urllib.request.urlopen(f"http://127.0.0.1:{port}/{token}/answer", timeout=2)


def test_listens_on_loopback_only() -> None:
    with AnswerServer({}, Emitter()) as srv:
        assert srv._server.address == "127.0.0.1"


def test_emitter_masks_registered_secrets() -> None:
    seen: list[Event] = []
    events = Emitter(seen.append)
    events.add_secret("hunter2-pass")
    events.log("provision", "[1:setup] password is hunter2-pass")
    assert seen[0].message == "[1:setup] password is ********"
