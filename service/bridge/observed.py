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
from redis.exceptions import RedisError

from service.core import keys
from service.core.storage import ScriptCall, decoded, run_scripts, slot_groups
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

# One compare-and-set per key, in the order given: KEYS[i] is the observed hash of change i and
# ARGV[i] its seven fields, packed into one argument (see ``_packed``).  Returns per change 1
# applied, 0 duplicate (same version or same content), -1 stale (older than stored).  One call
# serves a whole batch of a slot.
_COMPARE_AND_SET = (
    SEQUENCE_COMPARE_LUA
    + r"""
local function apply(key, seq, received, availability, activity, message, source, subscription)
  local cur = redis.call('HMGET', key,
    'sequence', 'received_at', 'availability', 'activity', 'status_message')
  if cur[3] then
    if seq ~= '' and cur[1] and cur[1] ~= '' then
      local order = compare(seq, cur[1])
      if order <= 0 then return order end
    else
      if tonumber(received) < tonumber(cur[2]) then return -1 end
      if cur[3] == availability and cur[4] == activity and (cur[5] or '') == message then return 0 end
    end
  end
  redis.call('HSET', key, 'sequence', seq, 'received_at', received, 'availability', availability,
    'activity', activity, 'status_message', message, 'source', source, 'subscription_id', subscription)
  return 1
end
local out = {}
for i = 1, #KEYS do
  local packed, f, at = ARGV[i], {}, 1
  for n = 1, 6 do
    local stop = string.find(packed, '\255', at, true)
    f[n] = string.sub(packed, at, stop - 1)
    at = stop + 1
  end
  out[i] = apply(KEYS[i], f[1], f[2], f[3], f[4], f[5], f[6], string.sub(packed, at))
end
return out
"""
)

# Byte 0xFF never occurs in UTF-8, so it separates text fields of any content unambiguously.
# One argument per change instead of seven: the client's per-argument encoding was the largest
# cost of a batch.
_SEPARATOR = b"\xff"


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

    async def apply_many(self, changes: list[PresenceChange]) -> list[Outcome | RedisError]:
        """Each change's outcome, in order; a batch costs one round trip and one script call per
        slot group.  A group whose call failed reports its error for each of its changes (changes
        before the failure may be stored: applying them again is a duplicate, never a step back)."""
        names = [keys.observed_presence(change.user_id) for change in changes]
        groups = slot_groups(self.redis, names)
        calls: list[ScriptCall] = []
        for group in groups:
            calls.append((self._script, [names[i] for i in group], [self._packed(changes[i]) for i in group]))
        outcomes: list[Outcome | RedisError] = [RedisError("not run")] * len(changes)
        for group, result in zip(groups, await run_scripts(self.redis, calls), strict=True):
            for i, value in zip(
                group, result if isinstance(result, list) else [result] * len(group), strict=True
            ):
                outcomes[i] = value if isinstance(value, RedisError) else Outcome(int(value))
        return outcomes

    async def apply(self, change: PresenceChange) -> Outcome:
        (outcome,) = await self.apply_many([change])
        if isinstance(outcome, RedisError):
            raise outcome
        return outcome

    @staticmethod
    def _packed(change: PresenceChange) -> bytes:
        # "replace": a lone surrogate (valid JSON, not encodable) must not fail the whole batch.
        return _SEPARATOR.join(
            field.encode("utf-8", "replace")
            for field in (
                change.sequence or "",
                repr(change.received_at),
                change.availability,
                change.activity,
                change.status_message or "",
                change.source,
                change.subscription_id,
            )
        )

    async def get(self, user_id: str) -> ObservedPresence | None:
        return parse_observed(user_id, await self.redis.hgetall(keys.observed_presence(user_id)))


def parse_observed(user_id: str, raw: dict[Any, Any]) -> ObservedPresence | None:
    """The observed presence from the hash's reply (empty: nothing observed yet)."""
    if not raw:
        return None
    data = {decoded(k): decoded(v) for k, v in raw.items()}
    return ObservedPresence(
        user_id=user_id,
        availability=data["availability"],
        activity=data["activity"],
        sequence=data.get("sequence") or None,
        status_message=data.get("status_message") or None,
        source=data.get("source", ""),
        received_at=float(data.get("received_at", "0")),
    )
