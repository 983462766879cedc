"""A bridge whose every part reports in: the state `status` calls healthy, to break one piece at a time."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from service.core import keys

Running = Callable[[aioredis.Redis], Awaitable[None]]


async def mark_running(redis: aioredis.Redis) -> None:
    """What a live worker, a leading scheduler and a fresh directory refresh leave in Redis."""
    now = time.time()
    await redis.zadd(keys.LIVE_WORKERS, {"worker-1": now})
    await redis.set(keys.SCHEDULER_LEASE, "host:1:abc", px=60_000)
    await redis.hset(keys.SCHEDULER_STATUS, mapping={"last_pass_at": str(now), "leader": "host"})
    await redis.hset(keys.STARFACE_DIRECTORY_META, mapping={"refreshed_at": repr(now), "version": "1"})


@pytest.fixture
def running() -> Running:
    return mark_running
