"""Lifecycle events from the stream become durable flags on the subscription's record."""

from __future__ import annotations

import json

import redis.asyncio as aioredis

from service.bridge.streams import append_lifecycle_batch
from service.core import keys
from subscriptions.lifecycle import LifecycleHandler
from subscriptions.records import SubscriptionRecord, SubscriptionRecords


async def test_events_set_flags_and_unknown_ones_are_ignored(redis_client: aioredis.Redis) -> None:
    records = SubscriptionRecords(redis_client)
    for account, subscription_id in (("a@x.test", "sub-a"), ("b@x.test", "sub-b"), ("c@x.test", "sub-c")):
        await records.put(SubscriptionRecord(account=account, id=subscription_id))
    events = [
        {"subscriptionId": "sub-a", "lifecycleEvent": "reauthorizationRequired"},
        {"subscriptionId": "SUB-B", "lifecycleEvent": "subscriptionRemoved"},
        {"subscriptionId": "sub-c", "lifecycleEvent": "missed"},
        {"subscriptionId": "someone-else", "lifecycleEvent": "subscriptionRemoved"},
    ]
    await append_lifecycle_batch(redis_client, events, 1000)
    await redis_client.xadd(keys.LIFECYCLE_STREAM, {"event": "not json"})
    consumer = LifecycleHandler(records).consumer(redis_client, block_ms=0)
    await consumer.ensure_group()
    assert await consumer.drain() == 5
    found = await records.all()
    a, b, c = found["a@x.test"], found["b@x.test"], found["c@x.test"]
    assert (a.reauthorize_requested, a.recreate_requested, a.resync_needed) == (True, False, True)
    assert (b.reauthorize_requested, b.recreate_requested, b.resync_needed) == (False, True, True)
    assert (c.reauthorize_requested, c.recreate_requested, c.resync_needed) == (False, False, True)
    pending = await redis_client.xpending(keys.LIFECYCLE_STREAM, keys.LIFECYCLE_GROUP)
    assert pending["pending"] == 0  # everything acknowledged, nothing dead-lettered
    assert await redis_client.xlen(keys.DEAD_LETTER_STREAM) == 0
    assert json.loads((await redis_client.hget(keys.SUBSCRIPTION_STATE, "a@x.test")) or "{}")["id"] == "sub-a"
