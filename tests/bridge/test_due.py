from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from service.bridge.due import Schedule
from service.bridge.mapping import load_mapping
from service.bridge.reconciler import Reconciler
from service.core import keys
from service.core.partitions import Partitions, adopt
from tests.bridge.harness import ModelGraph, RecordingStarface


async def test_one_writer_per_user_and_bursts_collapse(redis_client: aioredis.Redis) -> None:
    a, b = (
        Schedule(redis_client, Partitions(), hold_seconds=30),
        Schedule(redis_client, Partitions(), hold_seconds=30),
    )
    await a.mark(["u1", "u2"], at=100.0)
    await a.mark(["u1"], at=100.0)  # a second event for u1 is the same work
    first, second = await asyncio.gather(a.claim(101.0), b.claim(101.0))
    assert sorted(first + second) == ["u1", "u2"]
    assert not set(first) & set(second)
    holder = a if "u1" in first else b
    await holder.mark(["u1"], at=102.0)  # an event while u1 is being reconciled ...
    assert "u1" not in await b.claim(103.0)  # ... waits for the holder
    await holder.release("u1", next_due=None)
    assert await b.claim(104.0) == ["u1"]  # ... and then runs once more


async def test_release_keeps_the_earlier_due_time(redis_client: aioredis.Redis) -> None:
    schedule = Schedule(redis_client, Partitions(), hold_seconds=30)
    await schedule.mark(["u1"], at=10.0)
    assert await schedule.claim(10.0) == ["u1"]
    await schedule.mark(["u1"], at=12.0)
    await schedule.release("u1", next_due=500.0)  # a later timer does not postpone the new event
    assert (await schedule.due())["u1"] == 12.0
    assert await schedule.next_due_at() == 12.0


async def test_a_dead_holder_is_taken_over_after_its_hold(redis_client: aioredis.Redis) -> None:
    dead, alive = (
        Schedule(redis_client, Partitions(), hold_seconds=30),
        Schedule(redis_client, Partitions(), hold_seconds=30),
    )
    await dead.mark(["u1"], at=0.0)
    assert await dead.claim(1.0) == ["u1"]
    assert await alive.claim(20.0) == []
    assert await alive.claim(32.0) == ["u1"]


async def test_extend_pushes_only_claims_still_held_and_never_shortens(redis_client: aioredis.Redis) -> None:
    schedule = Schedule(redis_client, Partitions(), hold_seconds=10)
    await schedule.mark(["u1", "u2"], at=0.0)
    assert sorted(await schedule.claim(1.0)) == ["u1", "u2"]  # held until 11
    await schedule.release("u2", next_due=None)
    await schedule.extend(["u1", "u2", "u3"], deadline=25.0)
    await schedule.extend(["u1"], deadline=5.0)  # an older keeper's write cannot shorten it
    other = Schedule(redis_client, Partitions(), hold_seconds=10)
    await other.mark(["u2"], at=0.0)
    assert await other.claim(20.0) == ["u2"]  # u2 was released, u3 never claimed: not extended
    assert await other.claim(24.0) == []  # u1's claim lasts until 25 ...
    assert await other.claim(26.0) == ["u1"]  # ... and is taken over after it


async def test_a_live_reconciler_keeps_extending_the_claims_it_works_on(redis_client: aioredis.Redis) -> None:
    reconciler = Reconciler(
        redis_client,
        mapping=load_mapping(None),
        starface=RecordingStarface(),
        teams=ModelGraph(),
        partitions=Partitions(),
        hold_seconds=0.6,
    )
    reconciler.held.add("u1")  # as while its reconcile waits on a slow PBX
    await reconciler.schedule.mark(["u1"], at=0.0)
    assert await reconciler.schedule.claim(time.time()) == ["u1"]
    keeper = asyncio.create_task(reconciler._keep_claims())
    try:
        await asyncio.sleep(1.5)  # well past the hold: the live process keeps the user
        assert await Schedule(redis_client, Partitions(), hold_seconds=0.6).claim(time.time()) == []
    finally:
        keeper.cancel()
    await asyncio.sleep(0.8)  # the process stopped extending (as if it died): taken over
    assert await Schedule(redis_client, Partitions(), hold_seconds=0.6).claim(time.time()) == ["u1"]


async def test_partitions_keep_one_writer_per_user_and_claim_from_all(redis_client: aioredis.Redis) -> None:
    partitions = Partitions(4)
    a, b = (
        Schedule(redis_client, partitions, hold_seconds=30),
        Schedule(redis_client, partitions, hold_seconds=30),
    )
    users = [f"user-{n}" for n in range(20)]
    await a.mark(users, at=10.0)
    assert {partitions.of(u) for u in users} == {0, 1, 2, 3}  # spread over every partition
    for user in users:  # each user is due in its own partition only
        found = [p for p in partitions.indexes() if await redis_client.zscore(keys.reconcile_due(p), user)]
        assert found == [partitions.of(user)]
    first = await a.claim(11.0, limit=7)
    assert len(first) == 7  # a claim gives what was asked, the surplus of other partitions goes back
    second = await b.claim(11.0, limit=100)
    assert sorted(first + second) == sorted(users)  # nobody twice, nobody left out
    assert await a.claim(11.0, limit=100) == []
    await a.release(first[0], 30.0)  # the others stay held until 41
    assert await b.claim(29.0) == []
    assert await b.claim(30.0) == [first[0]]


async def test_rehome_moves_due_users_to_their_partition(redis_client: aioredis.Redis) -> None:
    await redis_client.zadd(keys.LEGACY_RECONCILE_DUE, {"old-due": 5.0})
    await redis_client.zadd(keys.LEGACY_RECONCILE_INFLIGHT, {"old-held": 99.0})
    stray = next(u for u in (f"u{n}" for n in range(100)) if Partitions(8).of(u) >= 2)
    await redis_client.zadd(keys.reconcile_due(Partitions(8).of(stray)), {stray: 7.0})
    schedule = Schedule(redis_client, Partitions(2), hold_seconds=30)
    # The count was 8 and is 2 now: partitions 0..7 are still read.
    moved = await schedule.rehome(
        [keys.LEGACY_RECONCILE_DUE, keys.LEGACY_RECONCILE_INFLIGHT], Partitions(8), now=20.0
    )
    assert moved == 3
    due = await schedule.due()
    assert due == {"old-due": 5.0, "old-held": 20.0, stray: 7.0}
    assert await redis_client.exists(keys.LEGACY_RECONCILE_DUE, keys.LEGACY_RECONCILE_INFLIGHT) == 0


async def test_a_smaller_partition_count_still_reads_the_larger_ones(redis_client: aioredis.Redis) -> None:
    assert await adopt(redis_client, Partitions(6)) == Partitions(6)
    assert await adopt(redis_client, Partitions(2)) == Partitions(6)  # 2..5 may hold queued entries
    assert await redis_client.hget(keys.PARTITIONS, "count") == b"2"
