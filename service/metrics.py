"""Prometheus metrics of the bridge, served on a separate port (never on the public webhook).

Counters and histograms are updated where things happen; gauges that describe Redis (stream
depth and lag, dead letters, seconds until each subscription expires) are refreshed by a
background task, so a scrape never waits on Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import redis.asyncio as aioredis
from prometheus_client import Counter, Gauge, Histogram, start_http_server
from redis.exceptions import RedisError

from service.settings import Settings

log = logging.getLogger(__name__)

_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_SLOW = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

NOTIFICATION_ACK_SECONDS = Histogram(
    "presence_bridge_notification_ack_seconds",
    "Time from receiving a Graph notification POST to answering it",
    ["endpoint", "status"],
    buckets=_FAST,
)
NOTIFICATION_ITEMS = Counter(
    "presence_bridge_notification_items_total",
    "Notification items by outcome: accepted, or the reason they were dropped",
    ["outcome"],
)
STREAM_LENGTH = Gauge("presence_bridge_stream_length", "Entries in a Redis stream", ["stream"])
STREAM_LAG = Gauge(
    "presence_bridge_stream_lag", "Entries not yet read by the stream's consumer group", ["stream"]
)
STREAM_PENDING = Gauge("presence_bridge_stream_pending", "Entries read but not yet acknowledged", ["stream"])
DEAD_LETTERS = Gauge("presence_bridge_dead_letters", "Entries in the dead-letter stream")
SUBSCRIPTION_EXPIRES_IN = Gauge(
    "presence_bridge_subscription_seconds_to_expiry",
    "Seconds until a service account's presence subscription expires",
    ["account"],
)
GRAPH_CALL_SECONDS = Histogram(
    "presence_bridge_graph_call_seconds",
    "Latency of Microsoft Graph requests",
    ["method", "status"],
    buckets=_SLOW,
)
GRAPH_CALL_ERRORS = Counter(
    "presence_bridge_graph_call_errors_total",
    "Graph requests that failed (no answer or an error status)",
    ["kind"],
)
STARFACE_CALL_SECONDS = Histogram(
    "presence_bridge_starface_call_seconds",
    "Latency of STARFACE REST and UCI requests",
    ["what"],
    buckets=_SLOW,
)
STARFACE_CALL_ERRORS = Counter(
    "presence_bridge_starface_call_errors_total", "STARFACE requests that failed", ["what"]
)
RECONCILE_SECONDS = Histogram(
    "presence_bridge_reconcile_seconds", "Time of one user's reconcile pass", buckets=_SLOW
)
RECONCILE_APPLY_LATENCY_SECONDS = Histogram(
    "presence_bridge_apply_latency_seconds",
    "From the triggering event (notification received, call event) to the change applied",
    ["side"],
    buckets=_SLOW,
)
RECONCILE_FAILURES = Counter(
    "presence_bridge_reconcile_failures_total", "Reconcile actions that failed and will be retried", ["side"]
)


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Expose ``/metrics`` on its own port (a daemon thread of prometheus_client)."""
    start_http_server(port, addr=host)
    log.info("Prometheus metrics on http://%s:%d/metrics", host, port)


async def refresh_gauges(redis: aioredis.Redis, settings: Settings) -> None:
    """Update the gauges that describe Redis; called every few seconds by the runtime.

    Only what the gauges show is read: the full ``status`` report also walks every bridged user.
    """
    from service import keys
    from service.status import streams
    from subscriptions.scheduler import status as subscription_status

    now = time.time()
    for name, info in (await streams(redis, now)).items():
        STREAM_LENGTH.labels(name).set(info["length"])
        STREAM_LAG.labels(name).set(info["lag"])
        STREAM_PENDING.labels(name).set(info["pending"])
    DEAD_LETTERS.set(int(await redis.xlen(keys.DEAD_LETTER_STREAM)))
    accounts = (await subscription_status(redis, settings.graph_service_accounts))["accounts"]
    for account, info in accounts.items():
        sub = info["subscription"]
        if sub and sub.get("expires_at"):
            SUBSCRIPTION_EXPIRES_IN.labels(account).set(float(sub["expires_at"]) - now)


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
