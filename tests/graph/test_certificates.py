from __future__ import annotations

import asyncio
import base64

import pytest
import redis.asyncio as aioredis
from cryptography import x509

from service.core import keys
from service.core.secretbox import SealError, SecretBox
from service.graph.certificates import CertificateStore
from tests.conftest import SECRET_KEY


async def test_first_use_creates_one_certificate_across_racing_replicas(redis_client: aioredis.Redis) -> None:
    stores = [CertificateStore(redis_client, SecretBox(SECRET_KEY)) for _ in range(4)]
    results = await asyncio.gather(*(s.current() for s in stores))
    assert len({c.id for c in results}) == 1
    assert await stores[0].ids() == [results[0].id]
    cert = x509.load_der_x509_certificate(base64.b64decode(results[0].graph_encoded()))
    assert cert.public_key().key_size == 2048  # type: ignore[union-attr]
    assert len(results[0].id) <= 128


async def test_private_key_is_sealed_at_rest_and_shared(redis_client: aioredis.Redis) -> None:
    cert = await CertificateStore(redis_client, SecretBox(SECRET_KEY)).current()
    raw = await redis_client.hget(keys.CERTIFICATES, cert.id)
    assert raw is not None
    assert b"PRIVATE KEY" not in (raw if isinstance(raw, bytes) else raw.encode())
    other = await CertificateStore(redis_client, SecretBox(SECRET_KEY)).get(cert.id)
    assert other is not None
    assert other.private_key.private_numbers() == cert.private_key.private_numbers()
    with pytest.raises(SealError):
        await CertificateStore(redis_client, SecretBox("another-key-" + "z" * 30)).get(cert.id)


async def test_rotation_keeps_the_old_certificate(redis_client: aioredis.Redis) -> None:
    store = CertificateStore(redis_client, SecretBox(SECRET_KEY))
    old = await store.current()
    new = await store.rotate()
    assert new.id != old.id
    assert (await store.current()).id == new.id
    assert await store.get(old.id) is not None
    with pytest.raises(ValueError, match="is current"):
        await store.remove(new.id)
    await store.remove(old.id)
    assert await CertificateStore(redis_client, SecretBox(SECRET_KEY)).get(old.id) is None
