"""Stable assignment of users to service accounts' subscriptions."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from subscriptions.shards import CAPACITY, ShardStore, ShortfallError, accounts_needed, assign, digest

ACCOUNTS = ["a@x.test", "b@x.test", "c@x.test", "d@x.test"]


def users(count: int) -> list[str]:
    return [str(uuid.UUID(int=i + 1)) for i in range(count)]


def test_accounts_needed() -> None:
    assert accounts_needed(0) == 0
    assert accounts_needed(650) == 1
    assert accounts_needed(651) == 2
    assert accounts_needed(1301) == 3


def test_shortfall_names_how_many_accounts_are_missing() -> None:
    with pytest.raises(ShortfallError) as caught:
        assign({}, users(1301), ACCOUNTS[:2])
    assert caught.value.missing == 1
    assert caught.value.needed == 3
    assert "add 1 more" in str(caught.value)


def test_everyone_assigned_once_within_capacity() -> None:
    result = assign({}, users(1301), ACCOUNTS[:3])
    members = [u for shard in result.values() for u in shard]
    assert sorted(members) == sorted(users(1301))
    assert all(len(shard) <= CAPACITY for shard in result.values())


def test_adding_and_removing_one_user_touches_one_shard() -> None:
    before = assign({}, users(1301), ACCOUNTS[:3])
    grown = assign(before, [*users(1301), "new-user"], ACCOUNTS[:3])
    assert sum(before[a] != grown[a] for a in before) == 1
    removed = before["b@x.test"][5]
    shrunk = assign(before, [u for u in users(1301) if u != removed], ACCOUNTS[:3])
    assert [a for a in before if before[a] != shrunk[a]] == ["b@x.test"]


def test_users_of_a_removed_account_move_and_nobody_else() -> None:
    before = assign({}, users(900), ACCOUNTS[:3])
    after = assign(before, users(900), ["a@x.test", "c@x.test"])
    assert set(before["a@x.test"]) <= set(after["a@x.test"])
    assert set(before["c@x.test"]) <= set(after["c@x.test"])
    assert sorted(after["a@x.test"] + after["c@x.test"]) == sorted(users(900))


def test_overfull_shard_sheds_only_its_overflow() -> None:
    before = {"a@x.test": users(700), "b@x.test": []}
    after = assign(before, users(700), ACCOUNTS[:2])
    assert len(after["a@x.test"]) == CAPACITY
    assert len(after["b@x.test"]) == 50


def test_digest_ignores_order() -> None:
    assert digest(["b", "a"]) == digest(["a", "b"])
    assert digest(["a"]) != digest(["a", "b"])


@settings(max_examples=60, deadline=None)
@given(
    initial=st.sets(st.integers(0, 2000), max_size=1900),
    added=st.sets(st.integers(2001, 2600), max_size=1),
    removed=st.sets(st.integers(0, 2000), max_size=1),
)
def test_property_single_change_touches_at_most_one_shard(
    initial: set[int], added: set[int], removed: set[int]
) -> None:
    before = assign({}, [str(i) for i in initial], ACCOUNTS[:3])
    changed = (initial | added) - removed
    if len(changed) > 3 * CAPACITY:
        return
    after = assign(before, [str(i) for i in changed], ACCOUNTS[:3])
    touched = [a for a in before if before[a] != after[a]]
    assert len(touched) <= len(added) + len(removed & initial)
    assert sorted(u for s in after.values() for u in s) == sorted(str(i) for i in changed)


async def test_store_round_trip_writes_only_changes(redis_client: aioredis.Redis) -> None:
    store = ShardStore(redis_client)
    first = assign({}, users(10), ACCOUNTS[:2])
    await store.save(first, {})
    assert await store.load() == first
    second = assign(first, users(9), ["a@x.test"])
    await store.save(second, first)
    assert await store.load() == second
