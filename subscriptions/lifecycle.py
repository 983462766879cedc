"""Lifecycle notifications (docs/protocols.md), read from the stream the web tier fills.

The handler only records what has to happen (reauthorize, recreate, resync) on the subscription's
record; the leased scheduler acts on it in its next pass.  Recording is idempotent and durable,
so entries are acknowledged at once and a replayed event does no harm.
"""

from __future__ import annotations

import json
import logging

import redis.asyncio as aioredis

from service.bridge.streams import Entry, StreamConsumer
from service.core import keys
from subscriptions.records import SubscriptionRecords

log = logging.getLogger(__name__)


class LifecycleHandler:
    def __init__(self, records: SubscriptionRecords) -> None:
        self.records = records

    async def handle(self, entries: list[Entry]) -> dict[str, str]:
        failures: dict[str, str] = {}
        for entry in entries:
            try:
                event = json.loads(entry.fields.get("event", ""))
            except ValueError:
                log.warning("lifecycle entry %s is not JSON; dropped", entry.id)
                continue
            if not isinstance(event, dict):
                continue
            subscription_id = str(event.get("subscriptionId", ""))
            kind = str(event.get("lifecycleEvent", ""))
            record = await self.records.by_subscription_id(subscription_id) if subscription_id else None
            if record is None:
                # Not one of ours (any more): a deleted predecessor's events need nothing.
                log.info("lifecycle %s for unknown subscription %s ignored", kind, subscription_id)
                continue
            # Every lifecycle event may mean notifications paused or were lost: resync the shard.
            record.resync_needed = True
            if kind == "reauthorizationRequired":
                record.reauthorize_requested = True
            elif kind == "subscriptionRemoved":
                record.recreate_requested = True
            elif kind != "missed":
                log.info("lifecycle event %r for %s: resync only", kind, subscription_id)
            await self.records.put(record)
            log.info("lifecycle %s for subscription %s of %s recorded", kind, record.id, record.account)
        return failures

    def consumer(
        self, redis: aioredis.Redis, *, name: str | None = None, block_ms: int = 1000
    ) -> StreamConsumer:
        return StreamConsumer(
            redis, keys.LIFECYCLE_STREAM, keys.LIFECYCLE_GROUP, self.handle, name=name, block_ms=block_ms
        )
