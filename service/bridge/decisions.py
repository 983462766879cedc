"""The last decisions per user: inputs, rule, actions, results, latency — for ``explain``."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from service.core import keys

KEEP = 50


@dataclass
class DecisionRecord:
    at: float
    user_id: str
    login: str | None
    trigger: str
    inputs: dict[str, Any]
    rule: str
    actions: list[str] = field(default_factory=list)
    results: list[str] = field(default_factory=list)
    latency_ms: float | None = None

    def to_json(self) -> str:
        # The fields as they are, not dataclasses.asdict: that deep-copies the inputs and the
        # lists first, a real part of a reconcile's CPU for a record that is only serialised.
        return json.dumps(vars(self), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: bytes | str) -> DecisionRecord:
        return cls(**json.loads(raw))

    def format(self) -> str:
        stamp = dt.datetime.fromtimestamp(self.at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        lines = [f"{stamp} UTC  trigger: {self.trigger}"]
        lines.append("  inputs:  " + ", ".join(f"{k}={v}" for k, v in self.inputs.items()))
        lines.append(f"  rule:    {self.rule}")
        if self.actions:
            for action, result in zip(self.actions, self.results, strict=False):
                lines.append(f"  action:  {action} -> {result}")
        else:
            lines.append("  action:  none (already as desired)")
        if self.latency_ms is not None:
            lines.append(f"  latency: {self.latency_ms:.0f} ms from the triggering event to applied")
        return "\n".join(lines)


def log_entry(record: DecisionRecord) -> tuple[str, str, int]:
    """Where the record goes, as what, and how many records the list keeps: for storing it in
    one step with the user's bridge record (``UserStateStore.update_bridge_and_log``)."""
    return keys.user_decisions(record.user_id), record.to_json(), KEEP


class DecisionLog:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def append(self, record: DecisionRecord) -> None:
        key, entry, keep = log_entry(record)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.lpush(key, entry)
            pipe.ltrim(key, 0, keep - 1)
            await pipe.execute()

    async def recent(self, user_id: str, limit: int = KEEP) -> list[DecisionRecord]:
        raw = await self.redis.lrange(keys.user_decisions(user_id), 0, limit - 1)
        return [DecisionRecord.from_json(r) for r in raw]
