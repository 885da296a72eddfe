"""The key that signs provenance, and DSSE envelopes made and checked with it.

The envelope is DSSE (github.com/secure-systems-lab/dsse, envelope.md) with
payloadType `application/vnd.in-toto+json`, as in-toto attestations use it; signing
and verifying are securesystemslib's (`CryptoSigner`, `dsse.Envelope`).

The key: `$PIM_SIGNING_KEY` (a PEM private key of the user's own: ed25519, ECDSA or
RSA), else `signing-key.pem` in PIM's config directory, an ed25519 key made on first
use (0600) with its public half beside it as `signing-key.pub`. Only the public
half ever leaves the machine.
"""

from __future__ import annotations

import base64
import copy
import json
import os
from pathlib import Path
from typing import Any

from pim.engine.errors import InputError, PimError
from pim.engine.paths import user_config_file

PAYLOAD_TYPE = "application/vnd.in-toto+json"
ENV = "PIM_SIGNING_KEY"


class SignatureError(PimError):
    """An envelope that is malformed or whose signature does not verify with the key given."""


def key_path() -> Path:
    """The private key's path: $PIM_SIGNING_KEY, else signing-key.pem in PIM's config directory."""
    explicit = os.environ.get(ENV)
    return Path(explicit) if explicit else user_config_file().with_name("signing-key.pem")


def public_key_path(private: Path | None = None) -> Path:
    """Where the public half of `private` (default: `key_path()`) is kept: beside it, `.pub`."""
    return (private or key_path()).with_suffix(".pub")


def signer() -> Any:
    """A securesystemslib CryptoSigner for `key_path()`, made (ed25519) when the default
    key does not exist yet. Raises InputError when $PIM_SIGNING_KEY names a file that
    is missing or not a PEM private key."""
    from cryptography.hazmat.primitives import serialization
    from securesystemslib.signer import CryptoSigner

    try:
        path = key_path()
    except RuntimeError:  # no HOME to find the config directory in
        raise InputError(f"no home directory to keep PIM's signing key in: set {ENV} to a PEM private key "
                         "or XDG_CONFIG_HOME to a writable folder") from None
    if not path.exists():
        if os.environ.get(ENV):
            raise InputError(f"{ENV}={path}: no such file; point it at a PEM private key, or unset it to "
                             "use PIM's own key")
        try:
            return _create(path)
        except OSError as e:
            raise InputError(f"cannot make the signing key {path} ({e.strerror}); make its folder writable "
                             f"or set {ENV} to a PEM private key") from None
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise InputError(f"{path}: not a usable PEM private key without a passphrase ({e}); "
                         f"fix it or set {ENV} to another key") from None
    _write_public(path, private)
    return CryptoSigner(private)  # type: ignore[arg-type]


def _create(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from securesystemslib.signer import CryptoSigner

    path.parent.mkdir(parents=True, exist_ok=True)
    new = CryptoSigner.generate_ed25519()
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(new.private_bytes)
    try:
        os.link(tmp, path)  # the first writer wins; a concurrent build uses its key
    except FileExistsError:
        tmp.unlink()
        return signer()
    tmp.unlink()
    _write_public(path, serialization.load_pem_private_key(path.read_bytes(), password=None))
    return new


def _write_public(path: Path, private: Any) -> None:
    """Put the public half beside the key as `.pub` when it is not there (best effort:
    `pim images verify` reads the private key's public half when it cannot)."""
    from cryptography.hazmat.primitives import serialization

    public = public_key_path(path)
    if public.exists():
        return
    tmp = public.with_name(f".{public.name}.{os.getpid()}")
    try:
        tmp.write_bytes(private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        os.replace(tmp, public)
    except OSError:
        tmp.unlink(missing_ok=True)


def verifying_key_path() -> Path:
    """The key `pim images verify` checks with by default: this machine's public key,
    else (no `.pub` written) its private key, whose public half is used."""
    public = public_key_path()
    return public if public.exists() or not key_path().exists() else key_path()


def load_public(path: Path) -> Any:
    """A securesystemslib key from a PEM public key file (or a private one: its public half).
    Raises InputError naming the file when it is neither."""
    from cryptography.hazmat.primitives import serialization
    from securesystemslib.signer import SSlibKey

    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read the public key ({e.strerror})") from None
    try:
        public = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            public = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError):
            raise InputError(f"{path}: not a PEM public key") from None
    return SSlibKey.from_crypto(public)  # type: ignore[arg-type]


def sign(statement: dict[str, Any]) -> dict[str, Any]:
    """The DSSE envelope (as JSON) of `statement` signed with `signer()`."""
    from securesystemslib.dsse import Envelope

    envelope = Envelope(json.dumps(statement, sort_keys=True).encode(), PAYLOAD_TYPE, {})
    envelope.sign(signer())
    return envelope.to_dict()


def open_envelope(envelope: dict[str, Any], key: Any) -> dict[str, Any]:
    """The statement inside `envelope` once its signature verifies with `key` (an SSlibKey).

    Raises SignatureError: not a DSSE envelope, another payload type, no signature by
    `key`, or a payload that is not a JSON object.
    """
    from securesystemslib.dsse import Envelope
    from securesystemslib.exceptions import VerificationError

    try:
        env = Envelope.from_dict(copy.deepcopy(envelope))  # from_dict takes the fields out of what it reads
    except (KeyError, TypeError, ValueError) as e:
        raise SignatureError(f"not a DSSE envelope ({e})") from None
    if env.payload_type != PAYLOAD_TYPE:
        raise SignatureError(f"payload type {env.payload_type!r}, expected {PAYLOAD_TYPE!r}")
    try:
        env.verify([key], 1)
    except VerificationError:
        signers = ", ".join(str(s.get("keyid", "?"))[:16] for s in envelope.get("signatures", []))
        raise SignatureError(f"the signature does not verify with key {key.keyid[:16]} (signed by: "
                             f"{signers or 'nobody'}): the statement was changed after signing, or another "
                             "key signed it (a builder's: give its public key with --key)") from None
    try:
        statement = json.loads(env.payload)
    except ValueError:
        raise SignatureError("the signed payload is not JSON") from None
    if not isinstance(statement, dict):
        raise SignatureError("the signed payload is not a JSON object")
    return statement


def payload_of(envelope: dict[str, Any]) -> dict[str, Any]:
    """The statement inside an envelope, unverified (for display)."""
    return json.loads(base64.b64decode(envelope["payload"]))
