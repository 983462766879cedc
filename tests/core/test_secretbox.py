from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.core.secretbox import SealError, SecretBox

BOX = SecretBox("a" * 32)


@given(st.binary(max_size=2048), st.text(max_size=50))
def test_round_trip(plaintext: bytes, context: str) -> None:
    assert BOX.open(BOX.seal(plaintext, context), context) == plaintext


def test_sealed_value_hides_the_plaintext_and_differs_each_time() -> None:
    one, two = BOX.seal(b"refresh-token-123", "k"), BOX.seal(b"refresh-token-123", "k")
    assert b"refresh-token" not in one
    assert one != two


def test_wrong_key_wrong_context_and_tampering_are_refused() -> None:
    sealed = BOX.seal(b"secret", "pb:credentials/0001")
    with pytest.raises(SealError, match="BRIDGE_SECRET_KEY"):
        SecretBox("b" * 32).open(sealed, "pb:credentials/0001")
    with pytest.raises(SealError):
        BOX.open(sealed, "pb:credentials/0002")
    for i in range(len(sealed)):
        flipped = bytearray(sealed)
        flipped[i] ^= 0x01
        with pytest.raises(SealError):
            BOX.open(bytes(flipped), "pb:credentials/0001")
    with pytest.raises(SealError):
        BOX.open(b"short", "x")


OLD, NEW = "o" * 32, "n" * 32


def test_a_box_opens_what_its_previous_keys_sealed_and_seals_with_the_current_one() -> None:
    old_box, rotating = SecretBox(OLD), SecretBox(NEW, previous=[OLD])
    sealed_old = old_box.seal(b"password", "ctx")
    assert rotating.open(sealed_old, "ctx") == b"password"
    assert not rotating.is_current(sealed_old)
    sealed_new = rotating.seal(b"password", "ctx")
    assert rotating.is_current(sealed_new)
    assert SecretBox(NEW).open(sealed_new, "ctx") == b"password"
    with pytest.raises(SealError):
        old_box.open(sealed_new, "ctx")  # a process still on the old key cannot read new values
    assert rotating.key_id == SecretBox(NEW).key_id != old_box.key_id
    assert NEW not in rotating.key_id
    assert len(rotating.key_id) == 8


def test_values_of_the_first_format_open_with_any_configured_key() -> None:
    import os

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    # Written as the first release stored values: version 1, nonce, ciphertext, no key id.
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"presence-bridge", info=b"at-rest v1")
    nonce = os.urandom(12)
    legacy = b"\x01" + nonce + AESGCM(key.derive(OLD.encode())).encrypt(nonce, b"token", b"ctx")
    assert SecretBox(OLD).open(legacy, "ctx") == b"token"
    assert SecretBox(NEW, previous=[OLD]).open(legacy, "ctx") == b"token"
    assert not SecretBox(OLD).is_current(legacy)  # so a rotation rewrites it with a key id
    with pytest.raises(SealError):
        SecretBox(NEW).open(legacy, "ctx")
