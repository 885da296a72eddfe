"""Secrets are masked once, by the emitter's registry, on every channel a build shows:
its events, Python logging, error text, IaC diagnostics and the answer server's log.

Real objects only: the answer server over HTTP on 127.0.0.1, the Proxmox client over
TLS against a loopback server, real subprocesses through pim.engine.run, real logging.
"""

from __future__ import annotations

import datetime
import json
import logging
import ssl
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from pim.engine.errors import BuildError, CommandError, PimError
from pim.engine.events import MASK, Emitter, Event, Secrets
from pim.engine.relay import Relay
from pim.engine.run import run
from pim.engine.services.answers import AnswerServer

PASSWORD = "ssh-Pa55word-for-the-build"
PVE_SECRET = "5f0e9c1a-pve-token-secret-77b2"


def _everything(events: list[Event], records: list[logging.LogRecord], *texts: str) -> str:
    shown = [json.dumps(e.to_json()) for e in events]
    shown += [logging.Formatter("%(name)s %(message)s").format(r) for r in records]
    return "\n".join([*shown, *texts])


def test_ssh_password_is_masked_in_events_logs_and_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[Event] = []
    events = Emitter(seen.append)
    events.add_secret(PASSWORD)
    events.log("provision", f"[1:setup] chpasswd root:{PASSWORD}", source="ssh", line=f"root:{PASSWORD}")
    # pim.run logs the argv of every child; the child prints the password and fails
    with pytest.raises(CommandError) as failed:
        run(["sh", "-c", f"echo 'the password is {PASSWORD}'; exit 3"])
    logging.getLogger("pim.test").warning("raw text from somewhere: %s", failed.value.args[0])
    try:
        raise BuildError(f"provisioning failed for {PASSWORD}", [f"echo {PASSWORD}"])
    except BuildError:
        logging.getLogger("pim.test").exception("the build failed")
    shown = _everything(seen, caplog.records, str(failed.value))
    assert PASSWORD not in shown
    assert shown.count(MASK) >= 6  # the event's message and data, argv logged, error argv and tail, raw text
    assert "exit status 3" in str(failed.value) and f"the password is {MASK}" in str(failed.value)
    assert any(r.name == "pim.run" and MASK in r.getMessage() for r in caplog.records)


def test_log_records_without_a_secret_are_left_as_they_are(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    events = Emitter(lambda e: None)
    events.add_secret(PASSWORD)
    logging.getLogger("pim.test").info("plain %s of %d", "message", 3)
    record, = caplog.records
    assert (record.msg, record.args, record.getMessage()) == ("plain %s of %d", ("message", 3), "plain message of 3")


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_answer_url_token_is_masked_everywhere(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[Event] = []
    events = Emitter(seen.append)
    with AnswerServer({"preseed.cfg": b"d-i debian-installer/locale string en_US\n"}, events) as srv:
        url, token, port = srv.url("preseed.cfg"), srv.token, srv.port
        assert _get(srv.url("preseed.cfg", host="127.0.0.1")) == 200
        assert _get(srv.url("preseed.cfg", host="127.0.0.1") + f"?again={token}") == 200
        assert _get(f"http://127.0.0.1:{srv.port}/{token}x/preseed.cfg") == 404
        # the boot command that carries the URL, as the console and QMP logging show it
        events.log("install", f"typing: linux url={url} auto=true", source="console")
        logging.getLogger("pim.qmp").debug("send-key for %s", url)
        with pytest.raises(CommandError) as failed:
            run(["sh", "-c", f"echo fetching {url}; exit 1"])
    access_log = [e.message for e in seen if e.data.get("source") == "http"]
    assert access_log == ["answer server: GET preseed.cfg 200 (41 bytes)"] * 2 + [
        "answer server: GET (unknown path) 404"]
    shown = _everything(seen, caplog.records, str(failed.value))
    assert token not in shown
    assert f"url=http://10.0.2.2:{port}/{MASK}/preseed.cfg" in shown


# ---------------------------------------------------------------- Proxmox over TLS

def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1)).sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def echoing_pve(tmp_path: Path) -> Iterator[str]:
    """An HTTPS server on 127.0.0.1 that answers every request 500, quoting the
    request's Authorization header (a careless proxy or API might)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = json.dumps({"errors": {"auth": self.headers.get("Authorization", "")}}).encode()
            self.send_response(500, f"internal error for {self.headers.get('Authorization', '')}")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    cert, key = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")  # verify_tls=False on purpose
def test_proxmox_token_is_masked_in_errors_events_logs_and_diagnostics(
        echoing_pve: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from pim.engine.deploy.proxmox.api import Pve
    from pim.engine.deploy.spec import ProxmoxTarget
    from pim.tofu.provider import _errors

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("PIM_TEST_PVE_SECRET", PVE_SECRET)
    target = ProxmoxTarget(type="proxmox", api_url=echoing_pve, node="pve1", storage="local-lvm",
                           token_id="pim@pve!deploy", token_secret_env="PIM_TEST_PVE_SECRET", verify_tls=False,
                           timeout=10)
    seen: list[Event] = []
    events = Emitter(seen.append)
    with pytest.raises(PimError) as failed:
        Pve(target, events).version()
    text = str(failed.value)
    assert "PVE answered 500" in text and MASK in text  # the server did quote the token
    events.warning("deploy", f"raw: {failed.value.args[0]}")
    logging.getLogger("pim.deploy").error("raw: %s", failed.value.args[0])
    diags = _errors(failed.value, "template")
    diag_text = "\n".join(f"{d.summary}\n{d.detail}" for d in diags.diags)
    shown = _everything(seen, caplog.records, text, diag_text)
    assert PVE_SECRET not in shown
    assert shown.count(MASK) >= 4


def test_relay_lines_and_worker_tails_mask_through_one_registry() -> None:
    said: list[str] = []
    relay = Relay("pim.Image web", lambda level, text: said.append(text), [PASSWORD])
    relay.event({"kind": "log", "stage": "provision", "message": f"password {PASSWORD}"})
    relay.event({"kind": "warning", "stage": "provision", "message": f"{PASSWORD} again"})
    assert said == [f"pim.Image web: [provision] password {MASK}", f"pim.Image web: provision {MASK} again"]
    assert relay.secrets.redact(f"Traceback: {PASSWORD}") == f"Traceback: {MASK}"


def test_redact_json_masks_every_string_of_a_manifest_like_structure() -> None:
    events = Emitter(lambda e: None)
    events.add_secret(PASSWORD)
    events.add_secret("abc")  # too short to mask: it would hide inside ordinary words
    manifest = {"schema": 2, "image": "web", "ok": True, "size": None,
                "spec": {"ssh": {"password": PASSWORD}, "env": [f"PW={PASSWORD}", 3.5, "abc"]},
                PASSWORD: ("tuple", PASSWORD)}
    masked = events.redact_json(manifest)
    assert masked == {"schema": 2, "image": "web", "ok": True, "size": None,
                      "spec": {"ssh": {"password": MASK}, "env": [f"PW={MASK}", 3.5, "abc"]},
                      MASK: ["tuple", MASK]}
    assert manifest["spec"]["ssh"]["password"] == PASSWORD  # a copy: the input is left alone


def test_a_longer_secret_is_masked_whole_when_it_contains_a_shorter_one() -> None:
    secrets = Secrets(["pass", "password-1234"], live=False)
    assert secrets.redact("password-1234 and pass") == f"{MASK} and {MASK}"
