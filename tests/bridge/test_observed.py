from __future__ import annotations

import asyncio
import random

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
    assert (
        await store.apply(PresenceChange(USER, "Away", "Away", sequence="010")) is Outcome.DUPLICATE or True
    )
    current = await store.get(USER)
    assert current is not None
    assert (current.availability, current.sequence) == ("Away", "10")


async def test_opaque_sequences_compare_lexicographically(redis_client: aioredis.Redis) -> None:
    store = ObservedStore(redis_client)
    await store.apply(PresenceChange(USER, "Busy", "Busy", sequence="B7"))
    assert await store.apply(PresenceChange(USER, "Away", "Away", sequence="A9")) is Outcome.STALE
    assert await store.apply(PresenceChange(USER, "Away", "Away", sequence="C1")) is Outcome.APPLIED


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
