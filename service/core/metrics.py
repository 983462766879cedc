"""Prometheus metrics of the bridge, served on a separate port (never on the public webhook).

Counters and histograms are updated where things happen; gauges that describe Redis (stream
depth and lag, dead letters, seconds until each subscription expires) are refreshed by a
background task (``service.ops.gauges``), so a scrape never waits on Redis.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

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

STARFACE_LOGINS_REFUSED = Counter(
    "presence_bridge_starface_logins_refused_total",
    "UCI logins whose password STARFACE refused (each may count towards an account lock-out)",
)
GRAPH_THROTTLED = Counter(
    "presence_bridge_graph_retries_total",
    "Graph answers (429/502/503/504) that were waited out and retried",
    ["status"],
)


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Expose ``/metrics`` on its own port (a daemon thread of prometheus_client)."""
    start_http_server(port, addr=host)
    log.info("Prometheus metrics on http://%s:%d/metrics", host, port)
