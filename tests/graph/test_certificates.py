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


async def test_a_retired_certificate_goes_only_after_no_subscription_used_it_for_the_grace(
    redis_client: aioredis.Redis,
) -> None:
    store = CertificateStore(redis_client, SecretBox(SECRET_KEY))
    old = await store.current()
    new = await store.rotate()
    # A subscription still holds the old one: it stays whatever the time.
    assert await store.retire_unused({old.id}, now=1000.0, grace_seconds=60) == []
    assert await store.retire_unused({old.id}, now=9999.0, grace_seconds=60) == []
    # Every subscription moved: the old one keeps decrypting late retries for the grace period.
    assert await store.retire_unused({new.id}, now=10_000.0, grace_seconds=60) == []
    assert await store.retire_unused({new.id}, now=10_059.0, grace_seconds=60) == []
    assert await store.get(old.id) is not None
    assert await store.retire_unused({new.id}, now=10_060.0, grace_seconds=60) == [old.id]
    assert await CertificateStore(redis_client, SecretBox(SECRET_KEY)).get(old.id) is None
    assert await store.ids() == [new.id]  # the current one is never retired


async def test_a_certificate_in_use_again_restarts_its_grace(redis_client: aioredis.Redis) -> None:
    store = CertificateStore(redis_client, SecretBox(SECRET_KEY))
    old = await store.current()
    await store.rotate()
    await store.retire_unused(set(), now=0.0, grace_seconds=60)
    await store.retire_unused({old.id}, now=30.0, grace_seconds=60)  # a subscription went back to it
    assert await store.retire_unused(set(), now=70.0, grace_seconds=60) == []
    assert await store.retire_unused(set(), now=130.0, grace_seconds=60) == [old.id]
