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
