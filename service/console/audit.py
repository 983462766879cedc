"""The console's audit log: who changed what, before and after, when (a capped Redis stream).

Secrets never reach it: callers pass descriptions ("password set"), never values.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from service.core import keys
from service.core.storage import decoded

MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class AuditEntry:
    id: str
    at: float
    who: str
    action: str
    target: str
    before: str
    after: str


class AuditLog:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def write(
        self, who: str, action: str, target: str = "", *, before: str = "", after: str = ""
    ) -> None:
        fields: dict[Any, Any] = {
            "at": repr(time.time()),
            "who": who,
            "action": action,
            "target": target,
            "before": before,
            "after": after,
        }
        await self.redis.xadd(keys.CONSOLE_AUDIT, fields, maxlen=MAX_ENTRIES, approximate=True)

    async def recent(self, limit: int = 200) -> list[AuditEntry]:
        raw: Any = await self.redis.xrevrange(keys.CONSOLE_AUDIT, count=limit)
        entries = []
        for entry_id, fields in raw:
            data = {decoded(k): decoded(v) for k, v in fields.items()}
            entries.append(
                AuditEntry(
                    id=decoded(entry_id),
                    at=float(data.get("at", "0")),
                    who=data.get("who", ""),
                    action=data.get("action", ""),
                    target=data.get("target", ""),
                    before=data.get("before", ""),
                    after=data.get("after", ""),
                )
            )
        return entries
