from __future__ import annotations

import asyncio
import random

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.bridge.observed import ObservedStore, Outcome
from service.graph.presence import PresenceChange

USER = "u-1"
STATES = [("Available", "Available"), ("Busy", "InACall"), ("Away", "Away"), ("DoNotDisturb", "Presenting")]


async def test_numeric_sequences_compare_as_numbers(redis_client: aioredis.Redis) -> None:
    store = ObservedStore(redis_client)
    assert await store.apply(PresenceChange(USER, "Busy", "Busy", sequence="9")) is Outcome.APPLIED
    assert await store.apply(PresenceChange(USER, "Away", "Away", sequence="10")) is Outcome.APPLIED
    assert await store.apply(PresenceChange(USER, "Busy", "Busy", sequence="9")) is Outcome.STALE
    # Leading zeros do not make a newer version: "010" is "10" again.
    assert await store.apply(PresenceChange(USER, "Away", "Away", sequence="010")) is Outcome.DUPLICATE
    current = await store.get(USER)
    assert current is not None
    assert (current.availability, current.sequence) == ("Away", "10")


async def test_opaque_sequences_compare_lexicographically(redis_client: aioredis.Redis) -> None:
    store = ObservedStore(redis_client)
    await store.apply(PresenceChange(USER, "Busy", "Busy", sequence="B7"))
    assert await store.apply(PresenceChange(USER, "Away", "Away", sequence="A9")) is Outcome.STALE
    assert await store.apply(PresenceChange(USER, "Away", "Away", sequence="C1")) is Outcome.APPLIED


async def test_a_batch_applies_each_change_in_order_and_reports_each_outcome(
    either_client: aioredis.Redis,
) -> None:
    store = ObservedStore(either_client)
    users = [f"batch-{i}" for i in range(40)]
    await either_client.delete(*(f"pb:{{u:{u}}}:observed" for u in users))
    first = [PresenceChange(u, "Busy", "InACall", sequence="5") for u in users]
    # One user four times within one batch: the later change sees the earlier one's write.
    repeated = [
        PresenceChange(users[0], "Away", "Away", sequence="7"),
        PresenceChange(users[0], "Busy", "Busy", sequence="6"),
        PresenceChange(users[0], "Away", "Away", sequence="7"),
        PresenceChange(users[1], "Away", "Away", sequence="8"),
    ]
    outcomes = await store.apply_many(first + repeated)
    assert outcomes[:40] == [Outcome.APPLIED] * 40
    assert outcomes[40:] == [Outcome.APPLIED, Outcome.STALE, Outcome.DUPLICATE, Outcome.APPLIED]
    stored = await store.get(users[0])
    assert stored is not None
    assert (stored.availability, stored.sequence) == ("Away", "7")
    assert await store.apply_many([]) == []


@pytest.mark.parametrize(
    "message",
    ["", "plain", "ÿ\xff and \x1f and | and \n lines", "Außer Haus 🏖️", "lone \udcff surrogate"],
)
async def test_any_status_message_survives_the_packed_batch(
    redis_client: aioredis.Redis, message: str
) -> None:
    store = ObservedStore(redis_client)
    await redis_client.delete(f"pb:{{u:{USER}}}:observed")
    change = PresenceChange(USER, "Away", "Away", sequence="1", status_message=message, subscription_id="s-1")
    assert await store.apply_many([change, PresenceChange("other", "Busy", "Busy")]) == [Outcome.APPLIED] * 2
    stored = await store.get(USER)
    assert stored is not None
    expected = message.encode("utf-8", "replace").decode() or None
    assert (stored.status_message, stored.sequence, stored.availability) == (expected, "1", "Away")
    assert await redis_client.hget(f"pb:{{u:{USER}}}:observed", "subscription_id") == b"s-1"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    versions=st.lists(st.integers(min_value=1, max_value=10_000), min_size=1, max_size=25),
    duplicates=st.lists(st.integers(min_value=0, max_value=24), max_size=10),
    seed=st.integers(),
)
def test_any_interleaving_ends_at_the_newest(
    redis_url: str, versions: list[int], duplicates: list[int], seed: int
) -> None:
    changes = [
        PresenceChange(USER, *STATES[v % len(STATES)], sequence=f"{v:020d}", received_at=float(i))
        for i, v in enumerate(versions)
    ]
    changes += [changes[d % len(changes)] for d in duplicates]
    random.Random(seed).shuffle(changes)

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        await client.delete(f"pb:{{u:{USER}}}:observed")
        store = ObservedStore(client)
        # Four concurrent writers: the script keeps them from interleaving.
        await asyncio.gather(*(store.apply(c) for c in changes))
        current = await store.get(USER)
        await client.aclose()
        newest = max(versions)
        assert current is not None
        assert current.sequence == f"{newest:020d}"
        assert (current.availability, current.activity) == STATES[newest % len(STATES)]

    asyncio.run(scenario())
