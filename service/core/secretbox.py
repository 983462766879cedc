"""Encryption at rest for everything secret the bridge stores in Redis.

AES-256-GCM with a key derived by HKDF from ``BRIDGE_SECRET_KEY``.  The Redis key name is bound
in as associated data, so a sealed value copied to another key does not open there.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import SecretStr

_VERSION = b"\x01"


class SealError(Exception):
    """A stored value cannot be opened: wrong BRIDGE_SECRET_KEY, or the value was altered."""

    def __init__(self, context: str) -> None:
        self.context = context
        super().__init__(
            f"cannot decrypt stored value {context!r}: BRIDGE_SECRET_KEY differs from the one "
            "that stored it, or the value was altered"
        )


class SecretBox:
    def __init__(self, secret_key: str | SecretStr) -> None:
        if isinstance(secret_key, SecretStr):
            secret_key = secret_key.get_secret_value()
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"presence-bridge", info=b"at-rest v1")
        self._aead = AESGCM(hkdf.derive(secret_key.encode("utf-8")))

    def seal(self, plaintext: bytes, context: str) -> bytes:
        nonce = os.urandom(12)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, context.encode("utf-8"))

    def open(self, sealed: bytes, context: str) -> bytes:
        if len(sealed) < 29 or sealed[:1] != _VERSION:
            raise SealError(context)
        try:
            return self._aead.decrypt(sealed[1:13], sealed[13:], context.encode("utf-8"))
        except InvalidTag:
            raise SealError(context) from None
