"""Mapping versions in Redis, the TOML export they are stored as, and the follower workers run."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from service.bridge.mapping import Mapping, MappingError, default_mapping, parse_mapping, to_toml
from service.bridge.mapping_store import MappingFollower, MappingStore, UnknownVersion, diff
from service.core import keys

GROUPED = """
base = "en"
[switches]
call_end_debounce_seconds = 2
[rows]
"Busy/InAMeeting" = { dnd = true, text = "In a meeting" }
[groups."Support".switches]
set_dnd = false
[groups."Support".rows]
"Away" = { dnd = false, text = "Back soon" }
[groups."Sales"]
"""


@pytest.mark.parametrize("text", [None, GROUPED])
def test_to_toml_round_trips(text: str | None) -> None:
    mapping = default_mapping("de") if text is None else parse_mapping(text)
    again = parse_mapping(to_toml(mapping))
    assert again.base == mapping.base
    assert [(g.name, g.table, g.rows, g.switches) for g in again.groups] == [
        (g.name, g.table, g.rows, g.switches) for g in mapping.groups
    ]


async def test_versions_are_numbered_and_the_newest_is_current(redis_client: aioredis.Redis) -> None:
    store = MappingStore(redis_client)
    first = await store.save(to_toml(default_mapping("de")), who="a")
    second = await store.save(to_toml(default_mapping("en")), who="b", note="english")
    assert (first.number, second.number) == (1, 2)
    assert (await store.current_number()) == 2
    back = await store.roll_back(1, who="c")
    assert back.number == 3
    assert back.toml == first.toml
    assert [v.number for v in await store.history()] == [3, 2, 1]
    assert any(line.startswith("+") for line in diff(first, second))
    with pytest.raises(UnknownVersion):
        await store.get(9)


async def test_an_invalid_text_is_never_stored(redis_client: aioredis.Redis) -> None:
    store = MappingStore(redis_client)
    with pytest.raises(MappingError):
        await store.save("[rows]\n", who="a")
    assert await store.current_number() is None
    assert not await redis_client.exists(keys.MAPPING_VERSIONS)


async def test_seed_stores_the_file_once_and_again_when_it_changes(redis_client: aioredis.Redis) -> None:
    store = MappingStore(redis_client)
    text = to_toml(default_mapping("de"))
    first = await store.seed(text, source="MAPPING_FILE")
    console = await store.save(to_toml(default_mapping("en")), who="console")
    # A restart with the same file keeps the console's newer version.
    assert (await store.seed(text, source="MAPPING_FILE")).number == console.number
    changed = await store.seed(text + "\n# edited\n", source="MAPPING_FILE")
    assert changed.number == console.number + 1
    assert first.number == 1


async def test_the_follower_applies_each_new_version_once(redis_client: aioredis.Redis) -> None:
    store = MappingStore(redis_client)
    applied: list[Mapping] = []

    async def apply(mapping: Mapping) -> None:
        applied.append(mapping)

    follower = MappingFollower(store, apply)
    assert not await follower.poll()
    await store.save(to_toml(default_mapping("de")), who="a")
    assert await follower.poll()
    assert not await follower.poll()
    # A version written by hand that does not parse is skipped, the last good one stays.
    await redis_client.hset(keys.MAPPING_VERSIONS, "2", '{"toml": "[rows]", "who": "x", "at": 0}')
    await redis_client.set(keys.MAPPING_CURRENT, "2")
    assert not await follower.poll()
    assert len(applied) == 1
