"""Prometheus metrics of the subscription code (registered once, in the default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

ACCOUNT_HEALTHY = Gauge(
    "presence_bridge_service_account_healthy",
    "1 when the service account can obtain delegated tokens, 0 when an operator must sign it in again",
    ["account"],
)
SUBSCRIPTIONS_ACTIVE = Gauge(
    "presence_bridge_subscriptions_active", "Presence subscriptions the scheduler currently holds"
)
SUBSCRIPTION_OPERATIONS = Counter(
    "presence_bridge_subscription_operations_total",
    "Subscription operations by kind (create, renew, recreate, delete, adopt, rotate) and result",
    ["operation", "result"],
)
RESYNC_PRESENCES = Counter(
    "presence_bridge_resync_presences_total", "Presences read by resync sweeps and queued"
)
ACCOUNTS_MISSING = Gauge(
    "presence_bridge_service_accounts_missing",
    "Service accounts still needed to cover every selected user (650 users per account)",
)
USERS_NOT_FOUND = Gauge(
    "presence_bridge_users_not_found", "Selected e-mail addresses without a matching Entra user"
)
