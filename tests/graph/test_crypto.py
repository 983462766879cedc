"""Graph's content encryption, checked against an implementation written from the reference text."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.graph.certificates import EncryptionCertificate, generate
from service.graph.crypto import ContentError, decrypt_content, encrypt_content, thumbprint

CERT: EncryptionCertificate = generate("pb-test-cert")
PRESENCE = {"id": "u1", "availability": "Busy", "activity": "InACall", "sequenceNumber": "0000000042"}


def reference_encrypt(plaintext: bytes) -> dict[str, str]:
    """docs/protocols.md ("Rich notifications") as Graph does it: fresh 32-byte key, AES-256-CBC with
    IV = key[:16], PKCS7, HMAC-SHA256 over the ciphertext, key wrapped with RSA-OAEP-SHA1."""
    key = os.urandom(32)
    padder = sym_padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    data = encryptor.update(padder.update(plaintext) + padder.finalize()) + encryptor.finalize()
    wrapped = CERT.certificate.public_key().encrypt(  # type: ignore[union-attr]
        key,
        padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None),  # noqa: S303
    )
    return {
        "data": base64.b64encode(data).decode(),
        "dataSignature": base64.b64encode(hmac.new(key, data, hashlib.sha256).digest()).decode(),
        "dataKey": base64.b64encode(wrapped).decode(),
        "encryptionCertificateId": CERT.id,
    }


def reference_decrypt(content: dict[str, Any]) -> bytes:
    key = CERT.private_key.decrypt(
        base64.b64decode(content["dataKey"]),
        padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None),  # noqa: S303
    )
    data = base64.b64decode(content["data"])
    expected = base64.b64encode(hmac.new(key, data, hashlib.sha256).digest()).decode()
    assert hmac.compare_digest(expected, content["dataSignature"])
    decryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    unpadder = sym_padding.PKCS7(128).unpadder()
    return unpadder.update(decryptor.update(data) + decryptor.finalize()) + unpadder.finalize()


def test_service_decrypts_what_the_reference_encrypts() -> None:
    plaintext = json.dumps(PRESENCE).encode()
    assert decrypt_content(reference_encrypt(plaintext), CERT.private_key) == plaintext


def test_reference_decrypts_what_the_service_encrypts() -> None:
    plaintext = json.dumps(PRESENCE).encode()
    content = encrypt_content(plaintext, CERT.certificate, CERT.id)
    assert reference_decrypt(content) == plaintext
    assert content["encryptionCertificateThumbprint"] == thumbprint(CERT.certificate)
    assert len(content["encryptionCertificateThumbprint"]) == 40


def test_every_item_gets_a_fresh_key() -> None:
    a = encrypt_content(b"same", CERT.certificate, CERT.id)
    b = encrypt_content(b"same", CERT.certificate, CERT.id)
    assert a["dataKey"] != b["dataKey"]
    assert a["data"] != b["data"]


ORIGINAL = encrypt_content(json.dumps(PRESENCE).encode(), CERT.certificate, CERT.id)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    field=st.sampled_from(["data", "dataSignature", "dataKey"]),
    position=st.integers(min_value=0),
    bit=st.integers(min_value=0, max_value=7),
)
def test_any_flipped_bit_is_refused_never_decrypted(field: str, position: int, bit: int) -> None:
    raw = bytearray(base64.b64decode(ORIGINAL[field]))
    raw[position % len(raw)] ^= 1 << bit
    tampered = dict(ORIGINAL, **{field: base64.b64encode(bytes(raw)).decode()})
    with pytest.raises(ContentError) as caught:
        decrypt_content(tampered, CERT.private_key)
    assert caught.value.reason in {"bad_signature", "bad_key"}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"data": "%%%"}, "malformed"),
        ({"dataKey": None}, "malformed"),
        ({"dataSignature": ""}, "malformed"),
        ({"dataKey": base64.b64encode(b"short").decode()}, "bad_key"),
    ],
)
def test_malformed_content(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(ContentError) as caught:
        decrypt_content(dict(ORIGINAL, **change), CERT.private_key)
    assert caught.value.reason == reason


def test_hmac_is_checked_before_decrypting() -> None:
    # Ciphertext that is not whole AES blocks, but correctly signed: the signature passes, then
    # the block check refuses it. Signed garbage never reaches the padding oracle.
    key = os.urandom(32)
    data = b"\x00" * 17
    wrapped = CERT.certificate.public_key().encrypt(  # type: ignore[union-attr]
        key,
        padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None),  # noqa: S303
    )
    content = {
        "data": base64.b64encode(data).decode(),
        "dataKey": base64.b64encode(wrapped).decode(),
        "dataSignature": base64.b64encode(hmac.new(key, data, hashlib.sha256).digest()).decode(),
    }
    with pytest.raises(ContentError, match="whole AES blocks"):
        decrypt_content(content, CERT.private_key)
    content["dataSignature"] = base64.b64encode(b"\x00" * 32).decode()
    with pytest.raises(ContentError) as caught:
        decrypt_content(content, CERT.private_key)
    assert caught.value.reason == "bad_signature"
