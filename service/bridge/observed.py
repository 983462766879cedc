"""Observed Teams presence per user, which only ever moves forward.

The compare-and-set runs as one Lua script, so two workers handling two changes of one user at
the same moment cannot interleave.  Ordering: by ``sequence`` (Graph's sortable version stamp)
when both the stored and the new change carry one, otherwise by the time the bridge received it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from service.core import keys
from service.core.storage import ScriptCall
from service.graph.presence import PresenceChange

# Orders two version stamps: all-digit stamps as numbers (leading zeros ignored), others as text.
# Shared with service.bridge.userstate, which keeps the user's own Teams state in the same order.
SEQUENCE_COMPARE_LUA = """
local function compare(a, b)
  if string.match(a, '^%d+$') and string.match(b, '^%d+$') then
    a = string.gsub(a, '^0+', '')
    b = string.gsub(b, '^0+', '')
    if #a ~= #b then return #a > #b and 1 or -1 end
  end
  if a == b then return 0 end
  return a > b and 1 or -1
end
"""

# Returns 1 applied, 0 duplicate (same version or same content), -1 stale (older than stored).
_COMPARE_AND_SET = (
    SEQUENCE_COMPARE_LUA
    + """
local cur = redis.call('HMGET', KEYS[1],
  'sequence', 'received_at', 'availability', 'activity', 'status_message')
local seq, received = ARGV[1], tonumber(ARGV[2])
if cur[3] then
  if seq ~= '' and cur[1] and cur[1] ~= '' then
    local order = compare(seq, cur[1])
    if order <= 0 then return order end
  else
    if received < tonumber(cur[2]) then return -1 end
    if cur[3] == ARGV[3] and cur[4] == ARGV[4] and (cur[5] or '') == ARGV[5] then return 0 end
  end
end
redis.call('HSET', KEYS[1], 'sequence', seq, 'received_at', ARGV[2], 'availability', ARGV[3],
  'activity', ARGV[4], 'status_message', ARGV[5], 'source', ARGV[6], 'subscription_id', ARGV[7])
return 1
"""
)


class Outcome(enum.IntEnum):
    STALE = -1
    DUPLICATE = 0
    APPLIED = 1


@dataclass(frozen=True)
class ObservedPresence:
    user_id: str
    availability: str
    activity: str
    sequence: str | None
    status_message: str | None
    source: str
    received_at: float


class ObservedStore:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._script = redis.register_script(_COMPARE_AND_SET)

    def call(self, change: PresenceChange) -> ScriptCall:
        """The compare-and-set of one change, for ``run_scripts``: a batch costs one round trip."""
        return (self._script, [keys.observed_presence(change.user_id)], self._args(change))

    async def apply(self, change: PresenceChange) -> Outcome:
        result = await self._script(keys=[keys.observed_presence(change.user_id)], args=self._args(change))
        return Outcome(int(result))

    @staticmethod
    def _args(change: PresenceChange) -> list[str]:
        return [
            change.sequence or "",
            repr(change.received_at),
            change.availability,
            change.activity,
            change.status_message or "",
            change.source,
            change.subscription_id,
        ]

    async def get(self, user_id: str) -> ObservedPresence | None:
        return parse_observed(user_id, await self.redis.hgetall(keys.observed_presence(user_id)))


def parse_observed(user_id: str, raw: dict[Any, Any]) -> ObservedPresence | None:
    """The observed presence from the hash's reply (empty: nothing observed yet)."""
    if not raw:
        return None
    data = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }
    return ObservedPresence(
        user_id=user_id,
        availability=data["availability"],
        activity=data["activity"],
        sequence=data.get("sequence") or None,
        status_message=data.get("status_message") or None,
        source=data.get("source", ""),
        received_at=float(data.get("received_at", "0")),
    )
