"""Encryption at rest for everything secret the bridge stores in Redis.

AES-256-GCM with a key derived by HKDF from ``BRIDGE_SECRET_KEY``.  The Redis key name is bound
in as associated data, so a sealed value copied to another key does not open there.

Each sealed value names the key that sealed it by a 4-byte key id (a digest of the derived key,
which reveals nothing about it), so a box can hold the current key and the keys it replaces:
it seals with the current one and opens with whichever sealed the value.  That is what lets
``BRIDGE_SECRET_KEY`` change while the bridge runs (docs/production.md, "Rotating the secret
key").  Values of the first format carry no key id; they open by trying each key.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import SecretStr

if TYPE_CHECKING:
    from service.core.settings import Settings

_V1 = b"\x01"  # version, nonce, ciphertext
_V2 = b"\x02"  # version, key id, nonce, ciphertext
_NONCE = 12
_KEY_ID = 4
_TAG = 16


class SealError(Exception):
    """A stored value cannot be opened: wrong BRIDGE_SECRET_KEY, or the value was altered."""

    def __init__(self, context: str) -> None:
        self.context = context
        super().__init__(
            f"cannot decrypt stored value {context!r}: it was sealed with a key that is neither "
            "BRIDGE_SECRET_KEY nor one of BRIDGE_SECRET_KEY_PREVIOUS, or it was altered"
        )


class _Key:
    def __init__(self, secret: str) -> None:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"presence-bridge", info=b"at-rest v1")
        derived = hkdf.derive(secret.encode("utf-8"))
        self.aead = AESGCM(derived)
        self.id = hashlib.sha256(b"presence-bridge key id\x00" + derived).digest()[:_KEY_ID]


def _plain(secret: str | SecretStr) -> str:
    return secret.get_secret_value() if isinstance(secret, SecretStr) else secret


class SecretBox:
    """Seals with ``secret_key``; opens values sealed with it or with any of ``previous``."""

    def __init__(self, secret_key: str | SecretStr, previous: Iterable[str | SecretStr] = ()) -> None:
        self._current = _Key(_plain(secret_key))
        self._keys = [self._current]
        for old in previous:
            key = _Key(_plain(old))
            if all(key.id != known.id for known in self._keys):
                self._keys.append(key)

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox:
        return cls(settings.secret_key, settings.previous_secret_keys())

    @property
    def key_id(self) -> str:
        """The current key's id in hex: safe to print, names which key sealed a value."""
        return self._current.id.hex()

    def seal(self, plaintext: bytes, context: str) -> bytes:
        nonce = os.urandom(_NONCE)
        sealed = self._current.aead.encrypt(nonce, plaintext, context.encode("utf-8"))
        return _V2 + self._current.id + nonce + sealed

    def open(self, sealed: bytes, context: str) -> bytes:
        aad = context.encode("utf-8")
        if sealed[:1] == _V2 and len(sealed) >= 1 + _KEY_ID + _NONCE + _TAG:
            key_id, nonce, body = sealed[1:5], sealed[5:17], sealed[17:]
            for key in self._keys:
                if key.id == key_id:
                    try:
                        return key.aead.decrypt(nonce, body, aad)
                    except InvalidTag:
                        break
            raise SealError(context)
        if sealed[:1] == _V1 and len(sealed) >= 1 + _NONCE + _TAG:
            for key in self._keys:
                try:
                    return key.aead.decrypt(sealed[1:13], sealed[13:], aad)
                except InvalidTag:
                    continue
        raise SealError(context)

    def is_current(self, sealed: bytes) -> bool:
        """Whether ``sealed`` names the current key (a rotation leaves such values alone)."""
        return sealed[:1] == _V2 and sealed[1 : 1 + _KEY_ID] == self._current.id
