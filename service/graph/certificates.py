"""Encryption certificates for rich notifications, shared by every replica through Redis.

Graph encrypts each notification's data key with the public key of the subscription's
certificate and names it by ``encryptionCertificateId``.  The private keys are sealed at rest; old
certificates are kept after a rotation so that notifications still in flight keep opening.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
import time
from collections.abc import Collection
from dataclasses import dataclass

import redis.asyncio as aioredis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from service.core import keys
from service.core.secretbox import SecretBox
from service.core.storage import decoded

# Sets the new certificate current only if none is current (first use) or if the caller saw the
# same current id (rotation), so two replicas racing never leave an orphan as current.
_INSTALL = """
local current = redis.call('GET', KEYS[2])
if ARGV[3] == '' then
  if current then return current end
elseif current ~= ARGV[3] then
  return current
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[1])
return ARGV[1]
"""


@dataclass(frozen=True)
class EncryptionCertificate:
    id: str
    certificate: x509.Certificate
    private_key: rsa.RSAPrivateKey
    created_at: float

    def graph_encoded(self) -> str:
        """Base64 DER of the public certificate, as ``encryptionCertificate`` takes it."""
        return base64.b64encode(self.certificate.public_bytes(serialization.Encoding.DER)).decode()


def generate(
    certificate_id: str, common_name: str = "presence-bridge notifications"
) -> EncryptionCertificate:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        # Graph does not check the issuer or dates; a long life avoids a pointless expiry event.
        .not_valid_after(now + dt.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    return EncryptionCertificate(certificate_id, cert, key, time.time())


def _new_id() -> str:
    return f"pb-{dt.datetime.now(dt.UTC):%Y%m%d%H%M%S}-{secrets.token_hex(4)}"


# Graph retries a delivery for up to 4 hours (docs/protocols.md); an hour more for clock skew.
RETIRE_AFTER_SECONDS = 5 * 3600.0


class CertificateStore:
    def __init__(self, redis: aioredis.Redis, box: SecretBox) -> None:
        self.redis = redis
        self.box = box
        # Certificates never change once stored, so caching them by id is always correct.
        self._cache: dict[str, EncryptionCertificate] = {}

    def _context(self, certificate_id: str) -> str:
        return f"{keys.CERTIFICATES}/{certificate_id}"

    def _seal(self, cert: EncryptionCertificate) -> bytes:
        payload = {
            "key_pem": cert.private_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ).decode(),
            "cert_pem": cert.certificate.public_bytes(serialization.Encoding.PEM).decode(),
            "created_at": cert.created_at,
        }
        return self.box.seal(json.dumps(payload).encode(), self._context(cert.id))

    def _open(self, certificate_id: str, sealed: bytes) -> EncryptionCertificate:
        payload = json.loads(self.box.open(sealed, self._context(certificate_id)))
        key = serialization.load_pem_private_key(payload["key_pem"].encode(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise TypeError(f"certificate {certificate_id} does not hold an RSA key")
        cert = x509.load_pem_x509_certificate(payload["cert_pem"].encode())
        return EncryptionCertificate(certificate_id, cert, key, float(payload["created_at"]))

    async def get(self, certificate_id: str) -> EncryptionCertificate | None:
        cached = self._cache.get(certificate_id)
        if cached is not None:
            return cached
        sealed = await self.redis.hget(keys.CERTIFICATES, certificate_id)
        if sealed is None:
            return None
        cert = self._open(certificate_id, _bytes(sealed))
        self._cache[certificate_id] = cert
        return cert

    async def current_id(self) -> str | None:
        raw = await self.redis.get(keys.CURRENT_CERTIFICATE)
        return None if raw is None else decoded(raw)

    async def current(self) -> EncryptionCertificate:
        """The certificate new subscriptions use; created on first use, once across replicas."""
        current = await self.current_id()
        if current is not None:
            found = await self.get(current)
            if found is not None:
                return found
        return await self._install(expected="")

    async def rotate(self) -> EncryptionCertificate:
        """Make a fresh certificate current; the old ones stay for notifications in flight."""
        return await self._install(expected=await self.current_id() or "")

    async def _install(self, expected: str) -> EncryptionCertificate:
        cert = generate(_new_id())
        winner = await self.redis.eval(
            _INSTALL, 2, keys.CERTIFICATES, keys.CURRENT_CERTIFICATE, cert.id, self._seal(cert), expected
        )
        winner_id = decoded(winner)
        if winner_id == cert.id:
            self._cache[cert.id] = cert
            return cert
        found = await self.get(winner_id)
        if found is None:
            raise LookupError(f"current certificate {winner_id} is missing from {keys.CERTIFICATES}")
        return found

    async def retire_unused(
        self, in_use: Collection[str], now: float, grace_seconds: float = RETIRE_AFTER_SECONDS
    ) -> list[str]:
        """Remove certificates that neither new subscriptions nor any subscription has used for
        ``grace_seconds``: Graph retries a failed delivery for hours, and such a retry is still
        encrypted for the certificate its subscription had then.  Returns the removed ids."""
        keep = set(in_use) | {await self.current_id() or ""}
        since = {
            decoded(k): float(decoded(v))
            for k, v in (await self.redis.hgetall(keys.CERTIFICATES_UNUSED_SINCE)).items()
        }
        removed = []
        for certificate_id in await self.ids():
            if certificate_id in keep:
                if certificate_id in since:
                    await self.redis.hdel(keys.CERTIFICATES_UNUSED_SINCE, certificate_id)
            elif certificate_id not in since:
                await self.redis.hset(keys.CERTIFICATES_UNUSED_SINCE, certificate_id, repr(now))
            elif now - since[certificate_id] >= grace_seconds:
                await self.remove(certificate_id)
                await self.redis.hdel(keys.CERTIFICATES_UNUSED_SINCE, certificate_id)
                removed.append(certificate_id)
        return removed

    async def ids(self) -> list[str]:
        return sorted(decoded(k) for k in await self.redis.hkeys(keys.CERTIFICATES))

    async def remove(self, certificate_id: str) -> None:
        """Forget a retired certificate; refuses the current one."""
        if certificate_id == await self.current_id():
            raise ValueError(f"certificate {certificate_id} is current and cannot be removed")
        await self.redis.hdel(keys.CERTIFICATES, certificate_id)
        self._cache.pop(certificate_id, None)


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()
