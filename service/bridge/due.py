"""When each user is next reconciled, shared by every reconciler process.

A user is due at a time (a sorted set).  Claiming moves due users into an in-flight set with a
deadline, skipping users another process holds: one writer per user.  Events for a user that is
being reconciled just mark it due again, so a burst collapses into one more pass.  A live process
keeps pushing the deadline of the users it works on (``extend``), so a slow pass never loses its
claim; a process that dies leaves its users in flight only until the deadline passes (15 s by
default), then any claimer takes them over.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis.asyncio as aioredis

from service.core import keys
from service.core.partitions import Partitions
from service.core.storage import decoded, run_scripts

# KEYS: due, inflight. ARGV: now, deadline, limit. Returns the claimed user ids.
_CLAIM = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for _, user in ipairs(expired) do
  redis.call('ZREM', KEYS[2], user)
  redis.call('ZADD', KEYS[1], 'LT', ARGV[1], user)
  redis.call('ZADD', KEYS[1], 'NX', ARGV[1], user)
end
local candidates = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]) * 4)
local claimed = {}
for _, user in ipairs(candidates) do
  if #claimed >= tonumber(ARGV[3]) then break end
  if not redis.call('ZSCORE', KEYS[2], user) then
    redis.call('ZREM', KEYS[1], user)
    redis.call('ZADD', KEYS[2], ARGV[2], user)
    table.insert(claimed, user)
  end
end
return claimed
"""

# KEYS: due, inflight. ARGV: user, next due ('' = none). Releases the user, keeping any newer mark.
_RELEASE = """
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[2] ~= '' then
  redis.call('ZADD', KEYS[1], 'LT', ARGV[2], ARGV[1])
  redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[1])
end
return 1
"""


class Schedule:
    """The due-set of every partition; a user is always marked and claimed in its own partition."""

    def __init__(self, redis: aioredis.Redis, partitions: Partitions, *, hold_seconds: float = 15.0) -> None:
        self.redis = redis
        self.partitions = partitions
        self.hold_seconds = hold_seconds
        self._claim = redis.register_script(_CLAIM)
        self._release = redis.register_script(_RELEASE)
        # Claims go round the partitions from a moving start, so none waits behind the others.
        self._next_partition = 0

    def _keys(self, partition: int) -> list[str]:
        return [keys.reconcile_due(partition), keys.reconcile_inflight(partition)]

    async def mark(self, user_ids: list[str], at: float) -> None:
        """Due at ``at`` unless already due earlier."""
        if not user_ids:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for user_id in user_ids:
                due = keys.reconcile_due(self.partitions.of(user_id))
                pipe.zadd(due, {user_id: at}, lt=True)
                pipe.zadd(due, {user_id: at}, nx=True)
            await pipe.execute()

    async def claim(self, now: float, limit: int = 50) -> list[str]:
        """Up to ``limit`` users due now, from every partition, in one round trip."""
        count = self.partitions.count
        start = self._next_partition
        self._next_partition = (start + 1) % count
        order = [(start + i) % count for i in range(count)]
        args: list[str | int] = [repr(now), repr(now + self.hold_seconds), limit]
        replies = await run_scripts(
            self.redis, [(self._claim, self._keys(p), args) for p in order], raise_on_error=True
        )
        claimed: list[str] = []
        surplus: list[tuple[int, str]] = []
        for partition, raw in zip(order, replies, strict=True):
            for user in raw:
                if len(claimed) < limit:
                    claimed.append(decoded(user))
                else:
                    surplus.append((partition, decoded(user)))
        if surplus:
            # Each partition may hand out ``limit``: give back what this pass cannot take now.
            await run_scripts(
                self.redis, [(self._release, self._keys(p), [user, repr(now)]) for p, user in surplus]
            )
        return claimed

    async def extend(self, user_ids: list[str], deadline: float) -> None:
        """Push the deadline of claims still held (never creating one, never shortening one)."""
        if not user_ids:
            return
        by_partition: dict[int, list[str]] = {}
        for user_id in user_ids:
            by_partition.setdefault(self.partitions.of(user_id), []).append(user_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            for partition, users in by_partition.items():
                pipe.zadd(
                    keys.reconcile_inflight(partition), dict.fromkeys(users, deadline), xx=True, gt=True
                )
            await pipe.execute()

    async def release(self, user_id: str, next_due: float | None) -> None:
        await self._release(
            keys=self._keys(self.partitions.of(user_id)),
            args=[user_id, "" if next_due is None else repr(next_due)],
        )

    async def due(self) -> dict[str, float]:
        result: dict[str, float] = {}
        for partition in self.partitions.indexes():
            raw: list[tuple[bytes, float]] = await self.redis.zrange(  # type: ignore[assignment]
                keys.reconcile_due(partition), 0, -1, withscores=True
            )
            result.update({decoded(u): float(s) for u, s in raw})
        return result

    async def next_due_at(self) -> float | None:
        firsts: list[float] = []
        for partition in self.partitions.indexes():
            raw = await self.redis.zrange(keys.reconcile_due(partition), 0, 0, withscores=True)
            if raw:
                firsts.append(float(raw[0][1]))
        return min(firsts, default=None)

    async def backlog(self, now: float) -> int:
        """Users due now and not yet claimed, over all partitions."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for partition in self.partitions.indexes():
                pipe.zcount(keys.reconcile_due(partition), "-inf", now)
            counts = await pipe.execute()
        return sum(int(c) for c in counts)

    async def rehome(self, previous: Iterable[str], read: Partitions, now: float) -> int:
        """Move due and held users found under ``previous`` keys, or in any partition of ``read``
        that is no longer theirs, to their own partition; returns how many moved.

        For a change of the partition count (and the one due-set before partitions), run while
        no other worker claims: a user must never be due in two partitions at once.
        """
        moved = 0
        sources = [*previous]
        for partition in read.indexes():
            sources.extend(self._keys(partition))
        for source in sources:
            raw: list[tuple[bytes, float]] = await self.redis.zrange(  # type: ignore[assignment]
                source, 0, -1, withscores=True
            )
            held = source.endswith(":inflight")
            strays = [
                (decoded(u), now if held else float(s))
                for u, s in raw
                if keys.reconcile_due(self.partitions.of(decoded(u))) != source
                and keys.reconcile_inflight(self.partitions.of(decoded(u))) != source
            ]
            for user, at in strays:
                await self.mark([user], at)
                await self.redis.zrem(source, user)
            moved += len(strays)
        return moved
