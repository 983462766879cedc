"""Password hashes for the console's break-glass account: scrypt, self-describing, stdlib only.

Format: ``scrypt$<n>$<r>$<p>$<salt, base64url>$<hash, base64url>``, so that the cost can be raised
later without invalidating stored hashes.  scrypt is memory-hard, which is what makes a stolen
hash expensive to guess at.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

# 16 MiB of memory per hash (128 * n * r bytes): ~50 ms here, painful for a guessing rig.
N, R, P = 2**14, 8, 1
_MAX_N = 2**20
_RENEW = "print a new one with `presence-bridge console hash-password`"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r, dklen=32)


def hash_password(password: str) -> str:
    if not password:
        raise ValueError("the password must not be empty")
    salt = secrets.token_bytes(16)
    return f"scrypt${N}${R}${P}${_b64(salt)}${_b64(_derive(password, salt, N, R, P))}"


def _parts(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    fields = encoded.split("$")
    if len(fields) != 6 or fields[0] != "scrypt":
        raise ValueError("must be a hash printed by `presence-bridge console hash-password` (scrypt$...)")
    try:
        n, r, p = int(fields[1]), int(fields[2]), int(fields[3])
        salt, digest = _unb64(fields[4]), _unb64(fields[5])
    except ValueError:
        raise ValueError(f"is not a readable scrypt hash: {_RENEW}") from None
    if n < 2 or n & (n - 1) or n > _MAX_N or not 1 <= r <= 32 or not 1 <= p <= 16 or len(digest) != 32:
        raise ValueError(f"has scrypt parameters out of range: {_RENEW}")
    return n, r, p, salt, digest


def check_format(encoded: str) -> None:
    """Raise ``ValueError`` saying what is wrong with a stored hash (settings validation)."""
    _parts(encoded)


def verify_password(password: str, encoded: str) -> bool:
    n, r, p, salt, digest = _parts(encoded)
    return hmac.compare_digest(_derive(password, salt, n, r, p), digest)
