"""When each user is next reconciled, shared by every reconciler process.

A user is due at a time (a sorted set).  Claiming moves due users into an in-flight set with a
deadline, skipping users another process holds: one writer per user.  Events for a user that is
being reconciled just mark it due again, so a burst collapses into one more pass.  A live process
keeps pushing the deadline of the users it works on (``extend``), so a slow pass never loses its
claim; a process that dies leaves its users in flight only until the deadline passes (15 s by
default), then any claimer takes them over.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from service.core import keys
from service.core.storage import decoded

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
    def __init__(self, redis: aioredis.Redis, *, hold_seconds: float = 15.0) -> None:
        self.redis = redis
        self.hold_seconds = hold_seconds
        self._claim = redis.register_script(_CLAIM)
        self._release = redis.register_script(_RELEASE)

    async def mark(self, user_ids: list[str], at: float) -> None:
        """Due at ``at`` unless already due earlier."""
        if not user_ids:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for user_id in user_ids:
                pipe.zadd(keys.RECONCILE_DUE, {user_id: at}, lt=True)
                pipe.zadd(keys.RECONCILE_DUE, {user_id: at}, nx=True)
            await pipe.execute()

    async def claim(self, now: float, limit: int = 50) -> list[str]:
        raw = await self._claim(
            keys=[keys.RECONCILE_DUE, keys.RECONCILE_INFLIGHT],
            args=[repr(now), repr(now + self.hold_seconds), limit],
        )
        return [decoded(u) for u in raw]

    async def extend(self, user_ids: list[str], deadline: float) -> None:
        """Push the deadline of claims still held (never creating one, never shortening one)."""
        if user_ids:
            await self.redis.zadd(
                keys.RECONCILE_INFLIGHT, dict.fromkeys(user_ids, deadline), xx=True, gt=True
            )

    async def release(self, user_id: str, next_due: float | None) -> None:
        await self._release(
            keys=[keys.RECONCILE_DUE, keys.RECONCILE_INFLIGHT],
            args=[user_id, "" if next_due is None else repr(next_due)],
        )

    async def due(self) -> dict[str, float]:
        raw: list[tuple[bytes, float]] = await self.redis.zrange(  # type: ignore[assignment]
            keys.RECONCILE_DUE, 0, -1, withscores=True
        )
        return {decoded(u): float(s) for u, s in raw}

    async def next_due_at(self) -> float | None:
        raw = await self.redis.zrange(keys.RECONCILE_DUE, 0, 0, withscores=True)
        return float(raw[0][1]) if raw else None
