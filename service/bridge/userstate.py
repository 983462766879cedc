"""Per-user reconcile state in Redis, beside the observed Teams presence (``service.bridge.observed``).

For each bridged user (keyed by Entra id, so all keys share one hash slot):

- the STARFACE calls that have not hung up (call id -> state and first-seen time), and the ids
  of ended calls for a day, so a late event of an ended call cannot revive it;
- the bridge record: what the bridge last applied to STARFACE (DND, text), what its Teams session
  holds (presence, expiry, when it was cleared), the user's own Teams state (the newest observed
  change that was not the echo of the bridge's session, with its version), the end of the last
  call, and the failure streak used for backoff;
- the read-back: what STARFACE showed at the last ``getUserState`` (``seen_*``, with the time the
  read was sent), when the bridge's last STARFACE write began and ended (``writing_at``,
  ``written_at``), and a DND the user switched themselves that the bridge respects
  (``override_*``, docs/readback.md);
- the times of the last hour's rewrites (``keys.user_rewrites``), which
  ``STARFACE_REWRITES_PER_HOUR`` bounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

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

# KEYS: bridge. ARGV: read sent at, dnd ('1'/'0'/'' unknown), text known ('1'/'0'), text, now,
# in-flight limit (s). Stores what STARFACE showed unless a bridge write overlapped the read, and
# answers how the read compares: in_flight, stale, match, differs (nothing new) or due (new: the
# user needs a reconcile).
_RECORD_SEEN = """
local f = redis.call('HMGET', KEYS[1], 'writing_at', 'written_at', 'seen_dnd', 'seen_text', 'seen_at',
  'applied_dnd', 'applied_text')
local sent = tonumber(ARGV[1])
if f[1] and tonumber(ARGV[5]) - tonumber(f[1]) < tonumber(ARGV[6]) then return 'in_flight' end
local written = tonumber(f[2] or '-1')
if sent <= written then return 'stale' end
local text = ARGV[3] == '1' and ARGV[4] or false
local was_fresh = f[5] ~= false and tonumber(f[5]) > written
local same = was_fresh and (f[3] or '') == ARGV[2] and f[4] == text
redis.call('HSET', KEYS[1], 'seen_at', ARGV[1], 'seen_dnd', ARGV[2])
if text then redis.call('HSET', KEYS[1], 'seen_text', text) else redis.call('HDEL', KEYS[1], 'seen_text') end
local differs = (ARGV[2] ~= '' and f[6] and f[6] ~= ARGV[2]) or (text and f[7] and f[7] ~= text)
if not differs then return 'match' end
if same then return 'differs' end
return 'due'
"""

# KEYS: rewrites. ARGV: now, limit per hour. Takes one rewrite from the hour's budget if any is
# left; answers {taken (1/0), rewrites in the hour, oldest of them}.
_TAKE_REWRITE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]) - 3600)
local used = redis.call('ZCARD', KEYS[1])
local taken = 0
if used < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[1])
  redis.call('EXPIRE', KEYS[1], 3600)
  used = used + 1
  taken = 1
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {taken, used, oldest[2] or ''}
"""

# KEYS: bridge record [, a log list]. ARGV: fields to set, then their values; the fields to
# delete follow the pairs after a count; with a log list, the entry and how many to keep come
# first. One script instead of MULTI/EXEC: the same atomicity on a cluster, where redis-py runs
# every command queued in a cluster transaction through a thread of its own.
_UPDATE_BRIDGE = """
local at = 1
local entry, keep
if KEYS[2] then
  entry, keep = ARGV[1], tonumber(ARGV[2])
  at = 3
end
local sets = tonumber(ARGV[at])
if sets > 0 then
  redis.call('HSET', KEYS[1], unpack(ARGV, at + 1, at + 2 * sets))
end
local deletes = at + 2 * sets + 1
if deletes <= #ARGV then
  redis.call('HDEL', KEYS[1], unpack(ARGV, deletes, #ARGV))
end
if KEYS[2] then
  redis.call('LPUSH', KEYS[2], entry)
  redis.call('LTRIM', KEYS[2], 0, keep - 1)
end
return 1
"""

# A bridge write older than this is no longer "in flight" (its process died mid-write).
WRITE_IN_FLIGHT_SECONDS = 60.0

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
    "seen_dnd",
    "seen_text",
    "seen_at",
    "writing_at",
    "written_at",
    "override_dnd",
    "override_since",
    "override_teams",
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
    seen_dnd: bool | None = None
    seen_text: str | None = None
    seen_at: float | None = None
    writing_at: float | None = None
    written_at: float | None = None
    override_dnd: bool | None = None
    override_since: float | None = None
    override_teams: TeamsPresence | None = None

    @property
    def seen_is_fresh(self) -> bool:
        """The last read-back was sent after the bridge's last STARFACE write ended."""
        return self.seen_at is not None and (self.written_at is None or self.seen_at > self.written_at)


@dataclass(frozen=True)
class Rewrites:
    """The rewrite budget after asking for one: whether it was granted, how many the last hour
    holds, and when the oldest of them leaves the hour."""

    taken: bool
    used: int
    reopens_at: float | None


def _flag(value: str | None) -> bool | None:
    return None if not value else value == "1"


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
        self._record_seen = redis.register_script(_RECORD_SEEN)
        self._take_rewrite = redis.register_script(_TAKE_REWRITE)
        self._update_bridge = redis.register_script(_UPDATE_BRIDGE)

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
        """Record ``presence`` as the user's own Teams state if it is newer than the recorded one:
        one call of a batch (``run_scripts``), answering 1 when it was stored."""
        return (
            self._offer_own,
            [keys.user_bridge(user_id)],
            [str(presence), sequence or "", repr(received_at)],
        )

    async def record_seen(
        self, user_id: str, *, sent_at: float, dnd: bool | None, text: str | None, now: float
    ) -> str:
        """Store what a read-back sent at ``sent_at`` found, unless a bridge write overlapped it;
        returns in_flight, stale, match, differs or due (see ``_RECORD_SEEN``)."""
        result = await self._record_seen(
            keys=[keys.user_bridge(user_id)],
            args=[
                repr(sent_at),
                "" if dnd is None else ("1" if dnd else "0"),
                "0" if text is None else "1",
                text or "",
                repr(now),
                WRITE_IN_FLIGHT_SECONDS,
            ],
        )
        return decoded(result)

    async def take_rewrite(self, user_id: str, now: float, per_hour: int) -> Rewrites:
        taken, used, oldest = await self._take_rewrite(
            keys=[keys.user_rewrites(user_id)], args=[repr(now), per_hour]
        )
        first = decoded(oldest)
        return Rewrites(bool(int(taken)), int(used), float(first) + 3600 if first else None)

    async def rewrites_in_hour(self, user_id: str, now: float) -> int:
        return int(await self.redis.zcount(keys.user_rewrites(user_id), now - 3600, "+inf"))

    async def update_bridge(self, user_id: str, **fields: object) -> None:
        await self.update_bridge_and_log(user_id, fields)

    async def update_bridge_and_log(
        self, user_id: str, fields: dict[str, object], log: tuple[str, str, int] | None = None
    ) -> None:
        """Set and delete fields of the user's bridge record, and with ``log`` (a list key of the
        same user, an entry, how many to keep) push the entry, all at once: one script call."""
        unknown = set(fields) - set(_FIELDS)
        if unknown:
            raise ValueError(f"unknown bridge record fields: {sorted(unknown)}")
        sets = [(k, v) for k, v in ((k, encode(k, v)) for k, v in fields.items()) if v is not None]
        deletes = [k for k, v in fields.items() if v is None]
        if not sets and not deletes and log is None:
            return
        script_keys = [keys.user_bridge(user_id)]
        args: list[str | int] = []
        if log is not None:
            script_keys.append(log[0])
            args += [log[1], log[2]]
        args.append(len(sets))
        for name, value in sets:
            args += [name, value]
        args += deletes
        await self._update_bridge(keys=script_keys, args=args)


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
    return BridgeRecord(
        session=_presence(data.get("session")),
        session_expires_at=_float(data.get("session_expires_at")),
        session_cleared_at=_float(data.get("session_cleared_at")),
        own_teams=_presence(data.get("own_teams")),
        applied_dnd=_flag(data.get("applied_dnd")),
        applied_text=data.get("applied_text"),
        last_call_ended_at=_float(data.get("last_call_ended_at")),
        failures=int(data.get("failures", "0")),
        last_error=data.get("last_error"),
        seen_dnd=_flag(data.get("seen_dnd")),
        seen_text=data.get("seen_text"),
        seen_at=_float(data.get("seen_at")),
        writing_at=_float(data.get("writing_at")),
        written_at=_float(data.get("written_at")),
        override_dnd=_flag(data.get("override_dnd")),
        override_since=_float(data.get("override_since")),
        override_teams=_presence(data.get("override_teams")),
    )
