"""The metric gauges that describe Redis, refreshed in the background so a scrape never waits on it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.bridge.due import Schedule
from service.core import keys
from service.core.metrics import (
    DEAD_LETTERS,
    DIRECTORY_REFRESHED,
    DIRECTORY_USERS,
    RECONCILE_BACKLOG,
    STREAM_LAG,
    STREAM_LENGTH,
    STREAM_PENDING,
    SUBSCRIPTION_EXPIRY,
    SUBSCRIPTION_SILENT,
    UCI_SESSIONS,
    WORKERS_ALIVE,
)
from service.core.partitions import most_used
from service.core.settings import Settings
from service.ops.status import streams, uci_sessions, workers_alive
from service.starface.directory import DirectoryStore
from subscriptions.scheduler import status as subscription_status

log = logging.getLogger(__name__)


async def refresh_gauges(redis: aioredis.Redis, settings: Settings) -> None:
    """Update the gauges that describe Redis; called every few seconds by the runtime.

    Only what the gauges show is read: the full ``status`` report also walks every bridged user.
    """
    now = time.time()
    partitions = await most_used(redis, settings.partitions)
    for name, info in (await streams(redis, now, partitions)).items():
        STREAM_LENGTH.labels(name).set(info["length"])
        STREAM_LAG.labels(name).set(info["lag"])
        STREAM_PENDING.labels(name).set(info["pending"])
    DEAD_LETTERS.set(int(await redis.xlen(keys.DEAD_LETTER_STREAM)))
    subscriptions = await subscription_status(redis, settings.graph_service_accounts)
    accounts = subscriptions["accounts"]
    for account in accounts.keys() | subscriptions["silent"].keys():
        SUBSCRIPTION_SILENT.labels(account).set(1 if account in subscriptions["silent"] else 0)
    for account, info in accounts.items():
        sub = info["subscription"]
        if sub and sub.get("expires_at"):
            SUBSCRIPTION_EXPIRY.labels(account).set(float(sub["expires_at"]))
    known = await uci_sessions(redis)
    down = sum(1 for s in known if s.error is not None)
    UCI_SESSIONS.labels("up").set(len(known) - down)
    UCI_SESSIONS.labels("down").set(down)
    directory = await DirectoryStore(redis).status()
    DIRECTORY_USERS.set(directory.users)
    DIRECTORY_REFRESHED.set(directory.refreshed_at or 0)
    # Due now and not yet claimed: claiming moves a user out of the due set.
    RECONCILE_BACKLOG.set(await Schedule(redis, partitions).backlog(now))
    WORKERS_ALIVE.set(await workers_alive(redis, now))


async def gauge_loop(
    redis: aioredis.Redis, settings: Settings, stop: asyncio.Event, every: float = 15.0
) -> None:
    while not stop.is_set():
        try:
            await refresh_gauges(redis, settings)
        except (RedisError, OSError) as exc:
            log.warning("metrics: Redis unavailable (%s)", type(exc).__name__)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)
