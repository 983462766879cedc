"""The scheduler lease against real Valkey: one holder, expiry, and compare-and-delete."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from subscriptions.lease import Lease, LeaseLost

KEY = "pb:{pb}:test:lease"


async def test_two_contenders_one_winner(redis_client: aioredis.Redis) -> None:
    first, second = Lease(redis_client, KEY, 5), Lease(redis_client, KEY, 5)
    results = await asyncio.gather(first.acquire(), second.acquire())
    assert sorted(results) == [False, True]
    winner = first if results[0] else second
    assert await winner.holder() == winner.token
    # The winner may take it again (extends); the loser still may not.
    loser = second if winner is first else first
    assert await winner.acquire()
    assert not await loser.acquire()


async def test_many_contenders_exactly_one_wins(redis_client: aioredis.Redis) -> None:
    leases = [Lease(redis_client, KEY, 5) for _ in range(20)]
    results = await asyncio.gather(*(lease.acquire() for lease in leases))
    assert results.count(True) == 1


async def test_expired_lease_passes_to_another_replica(redis_client: aioredis.Redis) -> None:
    old, new = Lease(redis_client, KEY, 0.2), Lease(redis_client, KEY, 0.2)
    assert await old.acquire()
    assert not await new.acquire()
    await asyncio.sleep(0.3)
    assert await new.acquire()
    # The former holder can neither extend nor delete its successor's lease.
    assert not await old.renew()
    assert not await old.release()
    with pytest.raises(LeaseLost):
        await old.ensure()
    assert await new.holder() == new.token


async def test_release_is_compare_and_delete(redis_client: aioredis.Redis) -> None:
    holder, other = Lease(redis_client, KEY, 5), Lease(redis_client, KEY, 5)
    assert await holder.acquire()
    assert not await other.release()
    assert await holder.holder() == holder.token
    assert await holder.release()
    assert await holder.holder() is None
    assert await other.acquire()


async def test_renewal_keeps_the_lease_past_its_ttl(redis_client: aioredis.Redis) -> None:
    holder, other = Lease(redis_client, KEY, 0.3), Lease(redis_client, KEY, 0.3)
    assert await holder.acquire()
    for _ in range(4):
        await asyncio.sleep(0.1)
        await holder.ensure()
    assert not await other.acquire()
    ttl = await redis_client.pttl(KEY)
    assert 0 < ttl <= 300


def test_ttl_must_be_positive(redis_client: aioredis.Redis) -> None:
    with pytest.raises(ValueError, match="positive"):
        Lease(redis_client, KEY, 0)
