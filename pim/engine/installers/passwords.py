"""SHA-512 crypt ("$6$") in pure Python, for the password hashes answer files carry.

The stdlib `crypt` module is deprecated in 3.11 and gone in 3.13, and every
installer PIM drives (d-i's user-setup, subiquity/cloud-init, anaconda) hands the
hash to glibc's crypt(3), which reads this format. Algorithm: Ulrich Drepper's
"Unix crypt using SHA-256 and SHA-512" specification.
"""

from __future__ import annotations

import hashlib
import hmac

ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
DEFAULT_ROUNDS = 5000  # the spec's default: such hashes carry no "rounds=" field
HASH_ROUNDS = 65536  # what PIM uses: ~13x glibc's default work, still ~0.2 s in pure Python
_MIN_ROUNDS, _MAX_ROUNDS = 1000, 999_999_999

# Byte order of the final digest in the encoded hash, three bytes per group (from the spec).
_ORDER = [
    (0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4), (47, 5, 26), (6, 27, 48),
    (28, 49, 7), (50, 8, 29), (9, 30, 51), (31, 52, 10), (53, 11, 32), (12, 33, 54), (34, 55, 13),
    (56, 14, 35), (15, 36, 57), (37, 58, 16), (59, 17, 38), (18, 39, 60), (40, 61, 19), (62, 20, 41),
]


def _repeat(block: bytes, length: int) -> bytes:
    return (block * (length // len(block) + 1))[:length]


def _b64(b2: int, b1: int, b0: int, n: int) -> str:
    w = (b2 << 16) | (b1 << 8) | b0
    out = []
    for _ in range(n):
        out.append(ALPHABET[w & 0x3F])
        w >>= 6
    return "".join(out)


def sha512_crypt(password: str, salt: str, rounds: int = DEFAULT_ROUNDS) -> str:
    """The crypt(3) "$6$" hash of password with this salt (first 16 characters used)."""
    if "$" in salt or ":" in salt or "\n" in salt:
        raise ValueError("a crypt salt may not contain '$', ':' or a newline")
    p = password.encode()
    s = salt.encode()[:16]
    rounds = min(max(rounds, _MIN_ROUNDS), _MAX_ROUNDS)

    b = hashlib.sha512(p + s + p).digest()
    a = hashlib.sha512(p + s + _repeat(b, len(p)))
    i = len(p)
    while i:
        a.update(b if i & 1 else p)
        i >>= 1
    c = a.digest()
    pp = _repeat(hashlib.sha512(p * len(p)).digest(), len(p))
    ss = _repeat(hashlib.sha512(s * (16 + c[0])).digest(), len(s))

    # Precomputed per-round inputs keep the 65536-round loop to one digest per round.
    for r in range(rounds):
        h = hashlib.sha512(pp if r & 1 else c)
        if r % 3:
            h.update(ss)
        if r % 7:
            h.update(pp)
        h.update(c if r & 1 else pp)
        c = h.digest()

    encoded = "".join(_b64(c[x], c[y], c[z], 4) for x, y, z in _ORDER) + _b64(0, 0, c[63], 2)
    head = "$6$" if rounds == DEFAULT_ROUNDS else f"$6$rounds={rounds}$"
    return f"{head}{s.decode()}${encoded}"


def stable_salt(password: str, context: str) -> str:
    """A 16-character salt derived from the password and a context (e.g. the user name).

    Deterministic on purpose: the rendered answer file is part of the install stage's
    cache key, so a random salt would force a fresh OS install on every build. It
    reveals only whether two images share the same password for the same context.
    """
    digest = hmac.new(password.encode(), b"pim-crypt-salt\0" + context.encode(), hashlib.sha256).digest()
    return "".join(ALPHABET[byte & 0x3F] for byte in digest[:16])


def password_hash(password: str, context: str = "") -> str:
    """The hash PIM writes into answer files (SHA-512 crypt, HASH_ROUNDS, stable salt)."""
    return sha512_crypt(password, stable_salt(password, context), HASH_ROUNDS)
