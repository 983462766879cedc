"""Dead letters on a real Valkey: bounded, listed, replayed with their count, purged; nothing lost."""

from __future__ import annotations

import time

import pytest
import redis.asyncio as aioredis

from service.bridge import deadletters
from service.bridge.deadletters import DeadLetters, UnknownDeadLetter
from service.bridge.streams import Entry, StreamConsumer
from service.core import keys

STREAM, GROUP = keys.presence_stream(0), keys.WORKER_GROUP


def consumer(redis: aioredis.Redis, *, healthy: set[str]) -> StreamConsumer:
    """A consumer whose handler fails every entry whose ``what`` is not in ``healthy``."""

    async def handler(entries: list[Entry]) -> dict[str, str]:
        return {e.id: "poison" for e in entries if e.fields.get("what") not in healthy}

    return StreamConsumer(redis, STREAM, GROUP, handler, block_ms=5, claim_idle_ms=1, max_deliveries=2)


async def drain(c: StreamConsumer) -> None:
    await c.ensure_group()
    for _ in range(6):  # each round reclaims what failed once it has been idle a moment
        await c.drain()
        time.sleep(0.003)


async def test_replayed_entry_that_fails_again_returns_with_its_whole_count(
    redis_client: aioredis.Redis,
) -> None:
    await redis_client.xadd(STREAM, {"what": "bad"})
    await drain(consumer(redis_client, healthy=set()))
    store = DeadLetters(redis_client)
    [letter] = await store.list()
    assert (letter.deliveries, letter.reason, letter.fields) == (2, "poison", {"what": "bad"})
    await store.replay(letter.id)
    assert await store.count() == 0
    await drain(consumer(redis_client, healthy=set()))
    [again] = await store.list()
    assert again.deliveries == 4  # 2 before the replay + 2 after: never reset, never lost
    assert again.fields == {"what": "bad"}


async def test_replay_after_the_fix_is_handled_and_leaves_nothing_behind(
    redis_client: aioredis.Redis,
) -> None:
    for what in ("a", "b"):
        await redis_client.xadd(STREAM, {"what": what})
    await drain(consumer(redis_client, healthy=set()))
    store = DeadLetters(redis_client)
    assert await store.count() == 2
    assert await store.replay_all() == 2
    fixed = consumer(redis_client, healthy={"a", "b"})
    await drain(fixed)
    assert fixed.processed == 2
    assert await store.count() == 0
    assert (await redis_client.xpending(STREAM, GROUP))["pending"] == 0


async def test_purge_one_or_all_and_unknown_ids_are_named(redis_client: aioredis.Redis) -> None:
    for what in ("a", "b", "c"):
        await redis_client.xadd(STREAM, {"what": what})
    await drain(consumer(redis_client, healthy=set()))
    store = DeadLetters(redis_client)
    first, *_ = await store.list()
    await store.purge(first.id)
    assert await store.count() == 2
    for act in (store.purge, store.replay):
        with pytest.raises(UnknownDeadLetter, match=first.id):
            await act(first.id)
    assert await store.purge_all() == 2
    assert await store.count() == 0


async def test_the_stream_is_bounded_by_count_and_by_age(redis_client: aioredis.Redis) -> None:
    now = time.time()
    for n in range(5):
        async with redis_client.pipeline(transaction=True) as pipe:
            deadletters.add(
                pipe, stream=STREAM, entry_id=f"{n}-0", reason="x", deliveries=1, fields={}, max_entries=3
            )
            await pipe.execute()
    assert await DeadLetters(redis_client).count() == 3
    # An entry older than the age bound goes at the next add.
    await redis_client.delete(keys.DEAD_LETTER_STREAM)
    await redis_client.xadd(keys.DEAD_LETTER_STREAM, {"stream": STREAM}, id=f"{int((now - 100) * 1000)}-0")
    async with redis_client.pipeline(transaction=True) as pipe:
        deadletters.add(
            pipe, stream=STREAM, entry_id="9-0", reason="x", deliveries=1, fields={}, max_age_seconds=10
        )
        await pipe.execute()
    [kept] = await DeadLetters(redis_client).list()
    assert kept.entry_id == "9-0"


async def test_a_dead_letter_for_a_stream_that_is_not_ours_is_not_replayed(
    redis_client: aioredis.Redis,
) -> None:
    await redis_client.xadd(keys.DEAD_LETTER_STREAM, {"stream": "someone:else", "fields": "{}"})
    [letter] = await DeadLetters(redis_client).list()
    with pytest.raises(UnknownDeadLetter):
        await DeadLetters(redis_client).replay(letter.id)
    assert await redis_client.exists("someone:else") == 0
    assert await DeadLetters(redis_client).count() == 1
