"""The user's bridge record and decision log stored in one step, on one Valkey and on a cluster."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from service.bridge.userstate import UserStateStore
from service.core import keys
from service.graph.presence import TeamsPresence

USER = "bbbb0000-0000-4000-8000-00000000000b"


async def test_fields_are_set_and_deleted_and_the_log_is_pushed_and_trimmed(
    either_client: aioredis.Redis,
) -> None:
    store = UserStateStore(either_client)
    log = keys.user_decisions(USER)
    await either_client.delete(keys.user_bridge(USER), log)
    session = TeamsPresence("Busy", "InACall")
    await store.update_bridge_and_log(
        USER, {"session": session, "session_cleared_at": 5.0, "applied_dnd": True}, (log, "first", 2)
    )
    for entry in ("second", "third"):
        await store.update_bridge_and_log(USER, {"session_cleared_at": None, "failures": 0}, (log, entry, 2))
    bridge = await store.bridge(USER)
    assert (bridge.session, bridge.session_cleared_at, bridge.applied_dnd, bridge.failures) == (
        session,
        None,
        True,
        0,
    )
    assert await either_client.lrange(log, 0, -1) == [b"third", b"second"]
    # Deletes alone, and nothing at all, are fine too.
    await store.update_bridge(USER, applied_dnd=None)
    await store.update_bridge(USER)
    assert (await store.bridge(USER)).applied_dnd is None


async def test_an_unknown_field_is_refused_before_anything_is_stored(redis_client: aioredis.Redis) -> None:
    store = UserStateStore(redis_client)
    await redis_client.delete(keys.user_bridge(USER))
    with pytest.raises(ValueError, match="unknown bridge record fields: \\['colour'\\]"):
        await store.update_bridge_and_log(USER, {"applied_dnd": True, "colour": "red"})
    assert await redis_client.exists(keys.user_bridge(USER)) == 0


async def test_a_reconcile_store_is_one_script_call_without_multi(redis_client: aioredis.Redis) -> None:
    async def calls(command: str) -> int:
        stats = await redis_client.info("commandstats")
        return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))

    store = UserStateStore(redis_client)
    await store.update_bridge(USER, failures=0)  # the server has the script from here on
    before = {c: await calls(c) for c in ("multi", "evalsha", "hset", "hdel", "lpush")}
    await store.update_bridge_and_log(
        USER, {"applied_dnd": True, "last_error": None}, (keys.user_decisions(USER), "{}", 50)
    )
    after = {c: await calls(c) for c in before}
    assert {c: after[c] - before[c] for c in before} == {
        "multi": 0,
        "evalsha": 1,
        "hset": 1,
        "hdel": 1,
        "lpush": 1,
    }
