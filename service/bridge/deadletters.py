"""The dead-letter stream: entries that kept failing, kept with their reason until an operator acts.

It is bounded by count and by age, so a poison source cannot fill Redis.  ``replay`` puts an entry
back on the stream it came from and remembers how often it was delivered before, so an entry that
fails again returns here with its whole count; ``purge`` deletes.  Each move is one transaction:
an entry is never in neither place.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from service.core import keys
from service.core.storage import decoded

DEFAULT_MAX_ENTRIES = 10_000
DEFAULT_MAX_AGE_SECONDS = 14 * 86_400

# The streams an entry may be replayed onto (any partition's, the lifecycle stream, and those of
# the layout before partitions); a dead letter naming anything else is refused.
_REPLAYABLE = re.compile(
    re.escape(keys.PREFIX)
    + r":\{p\d{1,3}\}:stream:(presence|calls)|"
    + "|".join(
        re.escape(k) for k in (keys.LIFECYCLE_STREAM, keys.LEGACY_PRESENCE_STREAM, keys.LEGACY_CALL_STREAM)
    )
)


def replayable(stream: str) -> bool:
    return _REPLAYABLE.fullmatch(stream) is not None


# A replayed entry carries its earlier deliveries in this field (handlers read only their own
# fields), so that it comes back with its whole count if it fails again.
REPLAYED_FIELD = "dead_letter_deliveries"


class UnknownDeadLetter(Exception):
    """No dead letter has this id (it was replayed, purged or trimmed meanwhile)."""

    def __init__(self, entry_id: str) -> None:
        self.entry_id = entry_id
        super().__init__(f"no dead letter {entry_id}")


@dataclass(frozen=True)
class DeadLetter:
    id: str
    stream: str
    entry_id: str
    reason: str
    deliveries: int
    failed_at: float
    fields: dict[str, str]

    @classmethod
    def from_entry(cls, entry_id: Any, raw: dict[Any, Any]) -> DeadLetter:
        data = {decoded(k): decoded(v) for k, v in raw.items()}
        try:
            fields = json.loads(data.get("fields", "{}"))
        except ValueError:
            fields = {}
        return cls(
            id=decoded(entry_id),
            stream=data.get("stream", ""),
            entry_id=data.get("entry_id", ""),
            reason=data.get("reason", ""),
            deliveries=_int(data.get("deliveries")),
            failed_at=_float(data.get("failed_at")),
            fields={str(k): str(v) for k, v in fields.items()} if isinstance(fields, dict) else {},
        )

    def summary(self) -> dict[str, Any]:
        """What an operator may see: never the entry's fields, which can carry user data."""
        return {
            "id": self.id,
            "stream": self.stream.rsplit(":", 1)[-1],
            "entry_id": self.entry_id,
            "reason": self.reason,
            "deliveries": self.deliveries,
            "failed_at": self.failed_at,
        }


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def _float(value: str | None) -> float:
    try:
        return float(value or 0)
    except ValueError:
        return 0.0


def add(
    pipe: Pipeline,
    *,
    stream: str,
    entry_id: str,
    reason: str,
    deliveries: int,
    fields: dict[str, str],
    max_entries: int = DEFAULT_MAX_ENTRIES,
    max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS,
    now: float | None = None,
) -> None:
    """Queue a dead letter on ``pipe`` (inside the consumer's ack transaction), trimmed to its bounds."""
    now = time.time() if now is None else now
    deliveries += _int(fields.get(REPLAYED_FIELD))
    fields = {k: v for k, v in fields.items() if k != REPLAYED_FIELD}
    pipe.xadd(
        keys.DEAD_LETTER_STREAM,
        {
            "stream": stream,
            "entry_id": entry_id,
            "reason": reason[:500],
            "deliveries": str(deliveries),
            "failed_at": f"{now:.3f}",
            "fields": json.dumps(fields),
        },
        maxlen=max_entries,
        approximate=False,
    )
    # Stream ids start with milliseconds since the epoch, so MINID trims by age.
    pipe.xtrim(keys.DEAD_LETTER_STREAM, minid=f"{int((now - max_age_seconds) * 1000)}-0", approximate=False)


class DeadLetters:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def count(self) -> int:
        return int(await self.redis.xlen(keys.DEAD_LETTER_STREAM))

    async def list(self, limit: int = 100) -> list[DeadLetter]:
        """The newest ``limit`` dead letters, newest first."""
        raw: Any = await self.redis.xrevrange(keys.DEAD_LETTER_STREAM, count=max(1, limit))
        return [DeadLetter.from_entry(i, f) for i, f in raw]

    async def get(self, dead_id: str) -> DeadLetter:
        raw: Any = await self.redis.xrange(keys.DEAD_LETTER_STREAM, min=dead_id, max=dead_id)
        if not raw:
            raise UnknownDeadLetter(dead_id)
        return DeadLetter.from_entry(*raw[0])

    async def replay(self, dead_id: str) -> str:
        """Put one dead letter back on its stream; returns the new entry's id there."""
        letter = await self.get(dead_id)
        if not replayable(letter.stream):
            raise UnknownDeadLetter(dead_id)
        fields = {**letter.fields, REPLAYED_FIELD: str(letter.deliveries)}
        # Two steps, not one transaction (the streams have different hash tags): queued first, so
        # a crash in between leaves a dead letter that was also replayed, never one that is lost.
        new_id = await self.redis.xadd(letter.stream, fields)  # type: ignore[arg-type]
        await self.redis.xdel(keys.DEAD_LETTER_STREAM, letter.id)
        return decoded(new_id)

    async def replay_all(self) -> int:
        replayed = 0
        for letter in await self.list(limit=await self.count() or 1):
            try:
                await self.replay(letter.id)
            except UnknownDeadLetter:
                continue
            replayed += 1
        return replayed

    async def purge(self, dead_id: str) -> None:
        if not await self.redis.xdel(keys.DEAD_LETTER_STREAM, dead_id):
            raise UnknownDeadLetter(dead_id)

    async def purge_all(self) -> int:
        count = await self.count()
        await self.redis.delete(keys.DEAD_LETTER_STREAM)
        return count
