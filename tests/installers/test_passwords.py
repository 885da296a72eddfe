import re
import shutil
import subprocess

import pytest

from pim.engine.installers.passwords import ALPHABET, HASH_ROUNDS, password_hash, sha512_crypt, stable_salt


def test_reference_vectors_from_the_specification() -> None:
    # Ulrich Drepper, "Unix crypt using SHA-256 and SHA-512", test vectors.
    assert sha512_crypt("Hello world!", "saltstring") == (
        "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"
    )
    assert sha512_crypt("Hello world!", "saltstringsaltstring", 10000) == (
        "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/"
        "YTBmSK6H9qs/y3RnOaw5v."
    )
    # Below the minimum, rounds are raised to 1000 and said so.
    assert sha512_crypt("x", "salt", 10).startswith("$6$rounds=1000$salt$")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
@pytest.mark.parametrize("password", ["a", "x" * 64, "x" * 65, "pässwörd with spaces " * 5])
def test_matches_an_independent_implementation(password: str) -> None:
    out = subprocess.run(["openssl", "passwd", "-6", "-salt", "abcDEF./0123", "-stdin"],
                         input=password.encode(), capture_output=True, check=True).stdout.decode().strip()
    assert sha512_crypt(password, "abcDEF./0123") == out


def test_salt_is_stable_per_password_and_context() -> None:
    salt = stable_salt("pw", "root")
    assert salt == stable_salt("pw", "root")
    assert salt != stable_salt("pw", "admin") and salt != stable_salt("pw2", "root")
    assert len(salt) == 16 and set(salt) <= set(ALPHABET)


def test_password_hash_format() -> None:
    hashed = password_hash("pw", "root")
    assert re.fullmatch(rf"\$6\$rounds={HASH_ROUNDS}\$[./0-9A-Za-z]{{16}}\$[./0-9A-Za-z]{{86}}", hashed)
    assert hashed == sha512_crypt("pw", stable_salt("pw", "root"), HASH_ROUNDS)


def test_salt_with_a_dollar_is_refused() -> None:
    with pytest.raises(ValueError):
        sha512_crypt("pw", "a$b")
