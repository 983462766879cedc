"""Which service account's subscription covers which users.

A subscription takes at most 650 users and each service account holds one, so N users need
⌈N/650⌉ accounts.  Because Graph cannot change a subscription's resource, every change of a
shard's user set costs a delete, a create and a resync of that shard; the assignment therefore
keeps the previous one (stored in Redis), drops users who left, and places each new user in the
emptiest shard with room.  Adding or removing one user thus changes exactly one shard.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence

import redis.asyncio as aioredis

from service.core import keys

CAPACITY = 650


class ShortfallError(Exception):
    """Too few service accounts for the users; ``missing`` is how many more are needed."""

    def __init__(self, users: int, needed: int, available: int, capacity: int = CAPACITY) -> None:
        self.users = users
        self.needed = needed
        self.available = available
        self.missing = needed - available
        super().__init__(
            f"{users} users need {needed} service accounts ({capacity} users per subscription), but "
            f"GRAPH_SERVICE_ACCOUNTS names {available}: add {self.missing} more"
        )


def accounts_needed(users: int, capacity: int = CAPACITY) -> int:
    return math.ceil(users / capacity)


def digest(user_ids: Iterable[str]) -> str:
    """A short fingerprint of a user set, to tell whether a subscription still matches its shard."""
    return hashlib.sha256(",".join(sorted(user_ids)).encode()).hexdigest()[:32]


def assign(
    previous: Mapping[str, Sequence[str]],
    users: Iterable[str],
    accounts: Sequence[str],
    capacity: int = CAPACITY,
) -> dict[str, list[str]]:
    """Stable assignment of ``users`` to ``accounts`` (lower-cased keys, sorted id lists)."""
    wanted = set(users)
    names = [a.lower() for a in accounts]
    needed = accounts_needed(len(wanted), capacity)
    if needed > len(names):
        raise ShortfallError(len(wanted), needed, len(names), capacity)
    shards: dict[str, set[str]] = {name: set() for name in names}
    placed: set[str] = set()
    for name in names:
        # Users of an account no longer configured fall through to "new" below; so does the
        # overflow of a shard above capacity (only possible if the capacity was lowered).
        keep = sorted(u for u in previous.get(name, ()) if u in wanted and u not in placed)[:capacity]
        shards[name].update(keep)
        placed.update(keep)
    order = {name: index for index, name in enumerate(names)}
    for user in sorted(wanted - placed):
        target = min(
            (n for n in names if len(shards[n]) < capacity), key=lambda n: (len(shards[n]), order[n])
        )
        shards[target].add(user)
    return {name: sorted(members) for name, members in shards.items()}


class ShardStore:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def load(self) -> dict[str, list[str]]:
        raw = await self.redis.hgetall(keys.SHARDS)
        return {(k.decode() if isinstance(k, bytes) else str(k)): list(json.loads(v)) for k, v in raw.items()}

    async def save(
        self, assignment: Mapping[str, Sequence[str]], previous: Mapping[str, Sequence[str]]
    ) -> None:
        changed = {
            a: json.dumps(list(u)) for a, u in assignment.items() if list(previous.get(a, [])) != list(u)
        }
        gone = [a for a in previous if a not in assignment]
        async with self.redis.pipeline(transaction=True) as pipe:
            if changed:
                pipe.hset(keys.SHARDS, mapping=changed)  # type: ignore[arg-type]
            if gone:
                pipe.hdel(keys.SHARDS, *gone)
            if changed or gone:
                await pipe.execute()
