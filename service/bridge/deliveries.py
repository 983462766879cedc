"""When Graph last delivered a change notification, per user and per subscription.

The scheduler's watch (subscriptions/watch.py) tells a silent subscription from a quiet one by
these times: a presence read that differs from the observed state is a missed change only when no
notification for that user arrived after the read.  They are written where notifications arrive,
not by the workers, because a notification repeating what a read already queued is a duplicate
there and is not passed on.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from service.core import keys
from service.graph.presence import PresenceChange


async def note_notifications(redis: aioredis.Redis, changes: list[PresenceChange], at: float) -> None:
    stamp = repr(at)
    subscriptions = {c.subscription_id for c in changes if c.subscription_id}
    # Two keys under the one global hash tag: one round trip, never a cross-slot transaction.
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hset(keys.NOTIFIED_AT, mapping={c.user_id: stamp for c in changes})
        if subscriptions:
            pipe.hset(keys.SUBSCRIPTION_DELIVERED_AT, mapping=dict.fromkeys(subscriptions, stamp))
        await pipe.execute()
