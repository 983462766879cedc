"""What the scheduler knows about each account's subscription, kept in Redis.

Any replica may die in the middle of a pass, so intent is written before each Graph call that
changes something (``recreate_requested``, ``resync_needed``): the next leader reads the record
and finishes the job instead of leaving a shard uncovered or unsynchronised.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import redis.asyncio as aioredis

from service.core import keys


@dataclass
class SubscriptionRecord:
    account: str
    id: str | None = None
    users_digest: str = ""
    user_count: int = 0
    expires_at: float = 0.0
    certificate_id: str = ""
    created_at: float = 0.0
    # A PATCH also reauthorizes; Graph forbids reauthorize and PATCH within ten minutes of each other.
    last_patch_at: float = 0.0
    # Last time Graph confirmed the subscription exists (create, PATCH or GET).
    verified_at: float = 0.0
    # Per-subscription offset so renewals of many shards do not all fall on the same second.
    renew_jitter: float = 0.0
    resync_needed: bool = False
    recreate_requested: bool = False
    reauthorize_requested: bool = False

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> SubscriptionRecord:
        data = json.loads(raw)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class SubscriptionRecords:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def get(self, account: str) -> SubscriptionRecord | None:
        raw = await self.redis.hget(keys.SUBSCRIPTION_STATE, account.lower())
        return None if raw is None else SubscriptionRecord.from_json(raw)

    async def all(self) -> dict[str, SubscriptionRecord]:
        raw = await self.redis.hgetall(keys.SUBSCRIPTION_STATE)
        records = [SubscriptionRecord.from_json(v) for v in raw.values()]
        return {r.account: r for r in records}

    async def put(self, record: SubscriptionRecord) -> None:
        await self.redis.hset(keys.SUBSCRIPTION_STATE, record.account.lower(), record.to_json())

    async def delete(self, account: str) -> None:
        await self.redis.hdel(keys.SUBSCRIPTION_STATE, account.lower())

    async def by_subscription_id(self, subscription_id: str) -> SubscriptionRecord | None:
        for record in (await self.all()).values():
            if record.id is not None and record.id.lower() == subscription_id.lower():
                return record
        return None
