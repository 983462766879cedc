from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from service.bridge.due import Schedule


async def test_one_writer_per_user_and_bursts_collapse(redis_client: aioredis.Redis) -> None:
    a, b = Schedule(redis_client, hold_seconds=30), Schedule(redis_client, hold_seconds=30)
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
    schedule = Schedule(redis_client, hold_seconds=30)
    await schedule.mark(["u1"], at=10.0)
    assert await schedule.claim(10.0) == ["u1"]
    await schedule.mark(["u1"], at=12.0)
    await schedule.release("u1", next_due=500.0)  # a later timer does not postpone the new event
    assert (await schedule.due())["u1"] == 12.0
    assert await schedule.next_due_at() == 12.0


async def test_a_dead_holder_is_taken_over_after_its_hold(redis_client: aioredis.Redis) -> None:
    dead, alive = Schedule(redis_client, hold_seconds=30), Schedule(redis_client, hold_seconds=30)
    await dead.mark(["u1"], at=0.0)
    assert await dead.claim(1.0) == ["u1"]
    assert await alive.claim(20.0) == []
    assert await alive.claim(32.0) == ["u1"]
