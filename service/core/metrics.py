"""Prometheus metrics of the bridge, served on a separate port (never on the public webhook).

Counters and histograms are updated where things happen; gauges that describe Redis (stream
depth and lag, dead letters, subscription expiry, UCI sessions, the directory, the reconcile
backlog, live workers) are refreshed by a background task (``service.ops.gauges``), so a scrape
never waits on Redis.  Every counter of failures names what failed with one label, ``kind``.
Times of day are exported as Unix timestamps (``*_timestamp_seconds``), never as "seconds until",
so an alert computes the distance with ``time()`` and a stale value cannot look fresh.
"""

from __future__ import annotations

import logging
import platform
from importlib.metadata import PackageNotFoundError, version

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
REQUESTS_SHED = Counter(
    "presence_bridge_requests_shed_total",
    "Requests to the public endpoints answered 503 at once because the process was at its cap",
)
REQUEST_BODY_TIMEOUTS = Counter(
    "presence_bridge_request_body_timeouts_total",
    "Requests whose body did not arrive within WEB_BODY_TIMEOUT_SECONDS (answered 408)",
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
SUBSCRIPTION_EXPIRY = Gauge(
    "presence_bridge_subscription_expiry_timestamp_seconds",
    "When a service account's presence subscription expires (Unix time)",
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
    ["kind"],
    buckets=_SLOW,
)
STARFACE_CALL_ERRORS = Counter(
    "presence_bridge_starface_call_errors_total", "STARFACE requests that failed", ["kind"]
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
    "presence_bridge_reconcile_failures_total", "Reconcile actions that failed and will be retried", ["kind"]
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

STARFACE_READ_BACKS = Counter(
    "presence_bridge_starface_read_backs_total",
    "getUserState read-backs by result: match (what the bridge applied), differs (someone else "
    "changed DND or text), in_flight or stale (a bridge write overlapped the read; ignored), failed",
    ["result"],
)
STARFACE_REWRITES = Counter(
    "presence_bridge_starface_rewrites_total",
    "Writes restoring a DND or status text someone else overwrote on STARFACE (written), and restores "
    "refused by STARFACE_REWRITES_PER_HOUR (capped)",
    ["field", "outcome"],
)
STARFACE_DND_OVERRIDES = Counter(
    "presence_bridge_starface_dnd_overrides_total",
    "Times a user switched DND themselves (phone key, app) against what the bridge applied, by policy",
    ["policy"],
)

STARFACE_CALLBACKS = Counter(
    "presence_bridge_starface_callbacks_total",
    "UCI callbacks from the PBX by outcome: accepted, ignored (not a call state), or why refused",
    ["outcome"],
)
UCI_SESSIONS = Gauge(
    "presence_bridge_starface_sessions", "STARFACE UCI sessions by state (up, down)", ["state"]
)
DIRECTORY_USERS = Gauge("presence_bridge_directory_users", "Users in the STARFACE directory the bridge read")
DIRECTORY_REFRESHED = Gauge(
    "presence_bridge_directory_last_refresh_timestamp_seconds",
    "When the STARFACE directory was last read (Unix time; 0 when never)",
)
RECONCILE_BACKLOG = Gauge(
    "presence_bridge_reconcile_backlog", "Users due for a reconcile pass that no reconciler holds yet"
)
WORKERS_ALIVE = Gauge("presence_bridge_workers_alive", "Worker processes whose heartbeat in Redis is recent")
MISSED_CHANGES = Counter(
    "presence_bridge_missed_changes_total",
    "Presence changes a subscription did not deliver: a read found them and no notification followed",
    ["account"],
)
SUBSCRIPTION_SILENT = Gauge(
    "presence_bridge_subscription_silent",
    "1 while the account's subscription is found silent and its users are polled; 0 when it delivers",
    ["account"],
)
PRESENCE_READS = Counter(
    "presence_bridge_presence_reads_total",
    "getPresencesByUserId requests of poll mode (poll), the watch (watch) and silent subscriptions (silent)",
    ["reason"],
)
PRESENCE_READ_CHANGES = Counter(
    "presence_bridge_presence_read_changes_total",
    "Changes those reads found and queued (an unchanged presence queues nothing)",
    ["reason"],
)
BUILD_INFO = Gauge(
    "presence_bridge_build_info", "Always 1; the labels name the running version", ["version", "python"]
)


def package_version() -> str:
    try:
        return version("presence-bridge")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


BUILD_INFO.labels(package_version(), platform.python_version()).set(1)


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Expose ``/metrics`` on its own port (a daemon thread of prometheus_client)."""
    start_http_server(port, addr=host)
    log.info("Prometheus metrics on http://%s:%d/metrics", host, port)
