"""Per-user reconcile state in Redis, beside the observed Teams presence (``service.bridge.observed``).

For each bridged user (keyed by Entra id, so all keys share one hash slot):

- the STARFACE calls that have not hung up (call id -> state and first-seen time), and the ids
  of ended calls for a day, so a late event of an ended call cannot revive it;
- the bridge record: what the bridge last applied to STARFACE (DND, text), what its Teams session
  holds (presence, expiry, when it was cleared), the user's own Teams state (the newest observed
  change that was not the echo of the bridge's session, with its version), the end of the last
  call, and the failure streak used for backoff.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from service.bridge.observed import SEQUENCE_COMPARE_LUA
from service.core import keys
from service.core.storage import ScriptCall, decoded
from service.graph.presence import TeamsPresence
from service.starface.calls import CallEvent

ENDED_CALL_MEMORY_SECONDS = 86_400

# KEYS: bridge. ARGV: presence, sequence, received_at. The newest non-echo change wins, in the
# same order as the observed presence, whatever order the changes arrive in.
_OFFER_OWN = (
    SEQUENCE_COMPARE_LUA
    + """
local cur = redis.call('HMGET', KEYS[1], 'own_teams', 'own_sequence', 'own_received_at')
if cur[1] then
  if ARGV[2] ~= '' and cur[2] and cur[2] ~= '' then
    if compare(ARGV[2], cur[2]) <= 0 then return 0 end
  elseif tonumber(ARGV[3]) <= tonumber(cur[3] or '0') then
    return 0
  end
end
redis.call('HSET', KEYS[1], 'own_teams', ARGV[1], 'own_sequence', ARGV[2], 'own_received_at', ARGV[3])
return 1
"""
)

# KEYS: calls, ended, bridge. ARGV: call id, state, event time. Returns 1 when the calls changed.
_APPLY_CALL = """
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return 0 end
if ARGV[2] == 'HANGUP' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('SADD', KEYS[2], ARGV[1])
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4]))
  local last = tonumber(redis.call('HGET', KEYS[3], 'last_call_ended_at') or '0')
  if tonumber(ARGV[3]) > last then redis.call('HSET', KEYS[3], 'last_call_ended_at', ARGV[3]) end
  return 1
end
local old = redis.call('HGET', KEYS[1], ARGV[1])
local first_seen = ARGV[3]
if old then
  local sep = string.find(old, '|', 1, true)
  if ARGV[2] == '' or string.sub(old, 1, sep - 1) == ARGV[2] then return 0 end
  first_seen = string.sub(old, sep + 1)
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. first_seen)
return 1
"""

_FIELDS = (
    "session",
    "session_expires_at",
    "session_cleared_at",
    "own_teams",
    "applied_dnd",
    "applied_text",
    "last_call_ended_at",
    "failures",
    "last_error",
)


@dataclass(frozen=True)
class Call:
    call_id: str
    state: str
    first_seen: float


@dataclass(frozen=True)
class BridgeRecord:
    session: TeamsPresence | None = None
    session_expires_at: float | None = None
    session_cleared_at: float | None = None
    own_teams: TeamsPresence | None = None
    applied_dnd: bool | None = None
    applied_text: str | None = None
    last_call_ended_at: float | None = None
    failures: int = 0
    last_error: str | None = None


def _float(value: str | None) -> float | None:
    return float(value) if value else None


def _presence(value: str | None) -> TeamsPresence | None:
    return TeamsPresence.parse(value) if value else None


def encode(field: str, value: object) -> str | None:
    """The stored text of a bridge-record field; ``None`` deletes the field."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, TeamsPresence):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


class UserStateStore:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._apply_call = redis.register_script(_APPLY_CALL)
        self._offer_own = redis.register_script(_OFFER_OWN)

    async def offer_own(
        self, user_id: str, presence: TeamsPresence, sequence: str | None, received_at: float
    ) -> bool:
        """Record ``presence`` as the user's own Teams state if it is newer than the recorded one."""
        stored = await self._offer_own(
            keys=[keys.user_bridge(user_id)], args=[str(presence), sequence or "", repr(received_at)]
        )
        return bool(int(stored))

    async def apply_call(self, user_id: str, event: CallEvent) -> bool:
        at = event.time if event.time is not None else event.received_at
        changed = await self._apply_call(
            keys=[keys.user_calls(user_id), keys.user_ended_calls(user_id), keys.user_bridge(user_id)],
            args=[event.call_id, event.state, repr(at), ENDED_CALL_MEMORY_SECONDS],
        )
        return bool(int(changed))

    async def calls(self, user_id: str) -> list[Call]:
        return parse_calls(await self.redis.hgetall(keys.user_calls(user_id)))

    async def forget_calls(self, user_id: str, call_ids: list[str], ended_at: float) -> None:
        """Drop calls the bridge judged stale (a HANGUP that never came) as if they hung up."""
        if not call_ids:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(keys.user_calls(user_id), *call_ids)
            pipe.sadd(keys.user_ended_calls(user_id), *call_ids)
            pipe.expire(keys.user_ended_calls(user_id), ENDED_CALL_MEMORY_SECONDS)
            pipe.hset(keys.user_bridge(user_id), "last_call_ended_at", repr(ended_at))
            await pipe.execute()

    async def bridge(self, user_id: str) -> BridgeRecord:
        return parse_bridge(await self.redis.hgetall(keys.user_bridge(user_id)))

    def offer_own_call(
        self, user_id: str, presence: TeamsPresence, sequence: str | None, received_at: float
    ) -> ScriptCall:
        """``offer_own`` as one call of a batch (``run_scripts``)."""
        return (
            self._offer_own,
            [keys.user_bridge(user_id)],
            [str(presence), sequence or "", repr(received_at)],
        )

    async def update_bridge(self, user_id: str, **fields: object) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            queue_bridge_update(pipe, user_id, fields)
            await pipe.execute()


def queue_bridge_update(pipe: Pipeline, user_id: str, fields: dict[str, object]) -> None:
    """Add an update of the user's bridge record to a transaction (other keys of the same user
    may share it: one round trip for everything a reconcile stores)."""
    unknown = set(fields) - set(_FIELDS)
    if unknown:
        raise ValueError(f"unknown bridge record fields: {sorted(unknown)}")
    sets = {k: v for k, v in ((k, encode(k, v)) for k, v in fields.items()) if v is not None}
    deletes = [k for k, v in fields.items() if v is None]
    if sets:
        pipe.hset(keys.user_bridge(user_id), mapping=sets)  # type: ignore[arg-type]
    if deletes:
        pipe.hdel(keys.user_bridge(user_id), *deletes)


def parse_calls(raw: dict[Any, Any]) -> list[Call]:
    """The user's calls from the calls hash's reply, oldest first."""
    calls = []
    for call_id, value in raw.items():
        state, _, first_seen = decoded(value).partition("|")
        calls.append(Call(decoded(call_id), state, float(first_seen or 0)))
    return sorted(calls, key=lambda c: (c.first_seen, c.call_id))


def parse_bridge(raw: dict[Any, Any]) -> BridgeRecord:
    """The bridge record from its hash's reply (empty: a user the bridge never acted for)."""
    data = {decoded(k): decoded(v) for k, v in raw.items()}
    dnd = data.get("applied_dnd")
    return BridgeRecord(
        session=_presence(data.get("session")),
        session_expires_at=_float(data.get("session_expires_at")),
        session_cleared_at=_float(data.get("session_cleared_at")),
        own_teams=_presence(data.get("own_teams")),
        applied_dnd=None if dnd is None else dnd == "1",
        applied_text=data.get("applied_text"),
        last_call_ended_at=_float(data.get("last_call_ended_at")),
        failures=int(data.get("failures", "0")),
        last_error=data.get("last_error"),
    )
