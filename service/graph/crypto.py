"""Graph rich-notification content encryption (docs/protocols.md, "Rich notifications").

``decrypt_content`` is what the webhook runs.  ``encrypt_content`` is what Microsoft Graph runs;
the Graph sandbox and the tests use it to produce notifications exactly as Graph does.
"""

from __future__ import annotations

import base64
import binascii
import hmac as std_hmac
import os
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509 import Certificate

# Graph wraps the data key with OAEP over SHA-1; the protocol fixes it, not a choice of ours.
_SHA1 = hashes.SHA1()  # noqa: S303
_OAEP_SHA1 = asym_padding.OAEP(mgf=asym_padding.MGF1(algorithm=_SHA1), algorithm=_SHA1, label=None)


class ContentError(Exception):
    """Encrypted content that cannot be trusted; ``reason`` is a short metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


def _b64(value: Any, name: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise ContentError("malformed", f"{name} missing")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ContentError("malformed", f"{name} is not base64") from None


def thumbprint(certificate: Certificate) -> str:
    """SHA-1 thumbprint in upper-case hex, as Graph reports ``encryptionCertificateThumbprint``."""
    return certificate.fingerprint(_SHA1).hex().upper()


def decrypt_content(encrypted: dict[str, Any], private_key: rsa.RSAPrivateKey) -> bytes:
    """Return the plaintext of one ``encryptedContent``; the HMAC is checked before decrypting."""
    wrapped = _b64(encrypted.get("dataKey"), "dataKey")
    data = _b64(encrypted.get("data"), "data")
    signature = _b64(encrypted.get("dataSignature"), "dataSignature")
    try:
        key = private_key.decrypt(wrapped, _OAEP_SHA1)
    except ValueError:
        raise ContentError("bad_key", "dataKey does not open with our private key") from None
    if len(key) != 32:
        raise ContentError("bad_key", "data key is not 32 bytes")
    mac = crypto_hmac.HMAC(key, hashes.SHA256())
    mac.update(data)
    try:
        mac.verify(signature)  # constant time
    except InvalidSignature:
        raise ContentError("bad_signature") from None
    if not data or len(data) % 16:
        raise ContentError("malformed", "ciphertext is not whole AES blocks")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    padded = decryptor.update(data) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise ContentError("malformed", "bad padding") from None


def encrypt_content(
    plaintext: bytes, certificate: Certificate, certificate_id: str, *, key: bytes | None = None
) -> dict[str, str]:
    """Encrypt as Microsoft Graph does: a fresh 32-byte key per item, wrapped with RSA-OAEP-SHA1."""
    key = os.urandom(32) if key is None else key
    public_key = certificate.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise TypeError("encryption certificate must hold an RSA key")
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    data = encryptor.update(padded) + encryptor.finalize()
    signature = std_hmac.new(key, data, "sha256").digest()
    return {
        "data": base64.b64encode(data).decode(),
        "dataSignature": base64.b64encode(signature).decode(),
        "dataKey": base64.b64encode(public_key.encrypt(key, _OAEP_SHA1)).decode(),
        "encryptionCertificateId": certificate_id,
        "encryptionCertificateThumbprint": thumbprint(certificate),
    }
