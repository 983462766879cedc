"""What a read-back records, on a real Valkey: a read that overlaps a bridge write is never taken
for someone else's change, and the hourly rewrite budget holds."""

from __future__ import annotations

import redis.asyncio as aioredis

from service.bridge.userstate import WRITE_IN_FLIGHT_SECONDS, UserStateStore

USER = "eeee0000-0000-4000-8000-000000000009"


async def applied(store: UserStateStore) -> None:
    await store.update_bridge(USER, applied_dnd=False, applied_text="Verfügbar", written_at=100.0)


async def test_a_read_during_a_bridge_write_is_dropped(redis_client: aioredis.Redis) -> None:
    store = UserStateStore(redis_client)
    await applied(store)
    # The bridge began writing DND on at 110; the read sees the new value before the bridge
    # stored it as applied: not the user's change.
    await store.update_bridge(USER, writing_at=110.0)
    result = await store.record_seen(USER, sent_at=110.5, dnd=True, text="Verfügbar", now=111.0)
    assert result == "in_flight"
    assert (await store.bridge(USER)).seen_at is None
    # A write whose process died is no longer in flight after a while.
    later = 110.0 + WRITE_IN_FLIGHT_SECONDS + 1
    assert await store.record_seen(USER, sent_at=later, dnd=False, text="Verfügbar", now=later) == "match"


async def test_a_read_sent_before_the_bridge_write_ended_is_stale(redis_client: aioredis.Redis) -> None:
    store = UserStateStore(redis_client)
    await applied(store)
    # Sent at 99 (before the write that ended at 100), answered after: it may show the old value.
    assert await store.record_seen(USER, sent_at=99.0, dnd=True, text="Alt", now=101.0) == "stale"
    assert (await store.bridge(USER)).seen_at is None


async def test_someone_elses_change_is_due_once_until_the_bridge_writes_again(
    redis_client: aioredis.Redis,
) -> None:
    store = UserStateStore(redis_client)
    await applied(store)
    assert await store.record_seen(USER, sent_at=101.0, dnd=False, text="Verfügbar", now=101.1) == "match"
    assert await store.record_seen(USER, sent_at=102.0, dnd=False, text="UCC", now=102.1) == "due"
    bridge = await store.bridge(USER)
    assert (bridge.seen_dnd, bridge.seen_text, bridge.seen_at, bridge.seen_is_fresh) == (
        False,
        "UCC",
        102.0,
        True,
    )
    # The same again: nothing new, the user is not marked again.
    assert await store.record_seen(USER, sent_at=103.0, dnd=False, text="UCC", now=103.1) == "differs"
    # The bridge restored its text (ended at 104); the UCC client overwrote it once more.
    await store.update_bridge(USER, written_at=104.0)
    assert not (await store.bridge(USER)).seen_is_fresh
    assert await store.record_seen(USER, sent_at=105.0, dnd=False, text="UCC", now=105.1) == "due"
    # DND differs too; an unknown text is not compared and not kept.
    assert await store.record_seen(USER, sent_at=106.0, dnd=True, text=None, now=106.1) == "due"
    bridge = await store.bridge(USER)
    assert (bridge.seen_dnd, bridge.seen_text) == (True, None)


async def test_the_rewrite_budget_holds_per_hour(redis_client: aioredis.Redis) -> None:
    store = UserStateStore(redis_client)
    taken = [await store.take_rewrite(USER, 1000.0 + i, 3) for i in range(5)]
    assert [t.taken for t in taken] == [True, True, True, False, False]
    assert taken[-1].used == 3
    assert taken[-1].reopens_at == 1000.0 + 3600
    assert await store.rewrites_in_hour(USER, 1004.0) == 3
    # An hour after the first, one more is allowed.
    again = await store.take_rewrite(USER, 4600.5, 3)
    assert (again.taken, again.used) == (True, 3)
    assert (await store.take_rewrite(USER, 4601.0, 0)).taken is False
