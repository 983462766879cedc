"""Subscriptions in the Graph sandbox: their rules, the book that holds them, and rate limits.

Pure state on the controllable clock, no HTTP: the rules of Graph subscriptions
(https://learn.microsoft.com/en-us/graph/api/resources/subscription) for presence resources.
"""

from __future__ import annotations

import base64
import binascii
import re
import urllib.parse
from collections import deque
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from service.sandbox.clock import Clock
from service.sandbox.graphstate import GUID, GraphError, bad_request, format_datetime, parse_datetime

PRESENCE_MAX_IDS = 650
SUBSCRIPTION_MAX_MINUTES = 60
SUBSCRIPTION_MIN_MINUTES = 45
CLIENT_STATE_MAX = 128
CERTIFICATE_ID_MAX = 128
REAUTHORIZE_PATCH_GAP = 10 * 60


@dataclass
class Subscription:
    id: str
    app_id: str
    tenant_id: str
    creator_id: str
    resource: str
    user_ids: frozenset[str]
    change_type: str
    notification_url: str
    lifecycle_url: str | None
    expires_at: float
    client_state: str | None
    include_resource_data: bool
    encryption_certificate: str | None
    encryption_certificate_id: str | None
    certificate: x509.Certificate | None
    latest_tls: str
    notification_url_app_id: str | None
    # The access token bound to the subscription: deliveries stop once it has expired
    # (lifecycle events: https://learn.microsoft.com/en-us/graph/change-notifications-lifecycle-events).
    authorized_until: float
    revoked: bool = False
    deleted: bool = False
    last_patch_at: float | None = None
    last_reauthorize_at: float | None = None
    # The authorization deadline a reauthorizationRequired event was already sent for.
    lifecycle_sent_for: float | None = None
    # Graph's presence subscriptions can stop firing for days and then recover, with no lifecycle
    # event and while the subscription still exists: a silent one drops every change unannounced.
    silent: bool = False
    silenced_changes: int = 0

    def active(self, now: float) -> bool:
        return not self.deleted and now < self.expires_at

    def delivering(self, now: float) -> bool:
        return self.active(now) and not self.revoked and now <= self.authorized_until

    def graph_json(self, *, with_client_state: bool) -> dict[str, Any]:
        return {
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions/$entity",
            "id": self.id,
            "resource": self.resource,
            "applicationId": self.app_id,
            "changeType": self.change_type,
            "clientState": self.client_state if with_client_state else None,
            "notificationUrl": self.notification_url,
            "notificationQueryOptions": None,
            "lifecycleNotificationUrl": self.lifecycle_url,
            "expirationDateTime": format_datetime(self.expires_at),
            "creatorId": self.creator_id,
            "includeResourceData": self.include_resource_data,
            "latestSupportedTlsVersion": self.latest_tls,
            "encryptionCertificate": self.encryption_certificate,
            "encryptionCertificateId": self.encryption_certificate_id,
            "notificationUrlAppId": self.notification_url_app_id,
        }

    def control_json(self, now: float) -> dict[str, Any]:
        result = self.graph_json(with_client_state=False)
        del result["@odata.context"]
        result.update(
            {
                "userIds": sorted(self.user_ids),
                "active": self.active(now),
                "delivering": self.delivering(now),
                "revoked": self.revoked,
                "deleted": self.deleted,
                "authorizedUntil": format_datetime(self.authorized_until),
                "silent": self.silent,
                "silencedChanges": self.silenced_changes,
            }
        )
        return result


def parse_presence_resource(resource: Any) -> frozenset[str]:
    """User ids named by a presence subscription resource, at most 650 distinct."""
    if not isinstance(resource, str) or not resource.strip():
        raise bad_request("resource is a required property for subscription creation.", "InvalidRequest")
    text = resource.strip().lstrip("/")
    path, _, query = text.partition("?")
    if path.lower().startswith("communications/presences/") and not query:
        user_id = path[len("communications/presences/") :]
        if not GUID.match(user_id):
            raise bad_request(f"Invalid user id '{user_id}' in resource.", "InvalidRequest")
        return frozenset({user_id.lower()})
    if path.lower() != "communications/presences":
        raise bad_request(f"Resource '{resource}' is not supported for subscriptions.", "InvalidRequest")
    params = urllib.parse.parse_qs(query, keep_blank_values=True)
    if any(key.lower() == "$select" for key in params):
        raise bad_request("$select is not supported for presence subscriptions.", "InvalidRequest")
    filters = [v for key, values in params.items() if key.lower() == "$filter" for v in values]
    if len(params) != 1 or len(filters) != 1:
        raise bad_request("Presence resource needs exactly one $filter=id in (...).", "InvalidRequest")
    match = re.fullmatch(r"\s*id\s+in\s+\((.*)\)\s*", filters[0], flags=re.IGNORECASE | re.DOTALL)
    if match is None:
        raise bad_request("Presence resource filter must be of the form id in ('...').", "InvalidRequest")
    ids: set[str] = set()
    for raw in match.group(1).split(","):
        item = raw.strip()
        if len(item) < 2 or item[0] != "'" or item[-1] != "'" or not GUID.match(item[1:-1]):
            raise bad_request(f"Invalid user id {item!r} in presence filter.", "InvalidRequest")
        ids.add(item[1:-1].lower())
    if len(ids) > PRESENCE_MAX_IDS:
        raise bad_request(
            f"The number of users in a presence subscription is limited to {PRESENCE_MAX_IDS}; "
            f"the request names {len(ids)}.",
            "InvalidRequest",
        )
    return frozenset(ids)


def parse_certificate(value: Any) -> x509.Certificate:
    """``encryptionCertificate``: base64 DER, or PEM with or without its armour
    (https://learn.microsoft.com/en-us/graph/change-notifications-with-resource-data)."""
    if not isinstance(value, str) or not value.strip():
        raise bad_request("encryptionCertificate is required when includeResourceData is true.")
    text = re.sub(r"-----(BEGIN|END) CERTIFICATE-----", "", value)
    text = "".join(text.split())
    try:
        certificate = x509.load_der_x509_certificate(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError):
        raise bad_request("encryptionCertificate is not a valid base64-encoded certificate.") from None
    key = certificate.public_key()
    if not isinstance(key, rsa.RSAPublicKey) or not 2048 <= key.key_size <= 4096:
        raise bad_request("encryptionCertificate must hold an RSA public key of 2048 to 4096 bits.")
    return certificate


def https_url(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise bad_request(f"{name} is a required property for subscription creation.", "InvalidRequest")
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme.lower() != "https" or not parsed.hostname:
        raise bad_request(f"The {name} must be a valid https URL.", "InvalidRequest")
    return value


def expiration(value: Any, now: float) -> float:
    """Presence subscription expiry: at most 60 minutes ahead; under 45 minutes becomes now + 45."""
    if value is None:
        raise bad_request(
            "expirationDateTime is a required property for subscription creation.", "InvalidRequest"
        )
    requested = parse_datetime(value)
    if requested > now + SUBSCRIPTION_MAX_MINUTES * 60:
        raise GraphError(
            400,
            "ExtensionError",
            f"Subscription expiration can only be {SUBSCRIPTION_MAX_MINUTES} minutes in the future.",
        )
    return max(requested, now + SUBSCRIPTION_MIN_MINUTES * 60)


class SubscriptionBook:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._items: dict[str, Subscription] = {}

    def get(self, subscription_id: str) -> Subscription | None:
        return self._items.get(subscription_id.lower())

    def all(self) -> list[Subscription]:
        return list(self._items.values())

    def active(self) -> list[Subscription]:
        now = self.clock.now()
        return [s for s in self._items.values() if s.active(now)]

    def covering(self, user_id: str) -> list[Subscription]:
        now = self.clock.now()
        return [s for s in self._items.values() if s.delivering(now) and user_id in s.user_ids]

    def conflict(self, app_id: str, creator_id: str) -> Subscription | None:
        """Graph subscriptions: one presence subscription per application per delegated user."""
        now = self.clock.now()
        for item in self._items.values():
            if item.active(now) and item.app_id == app_id and item.creator_id == creator_id:
                return item
        return None

    def add(self, subscription: Subscription) -> None:
        self._items[subscription.id] = subscription

    def prune(self, keep_seconds: float = 3600) -> None:
        """Forget subscriptions long past expiry or deletion, so memory stays bounded."""
        cutoff = self.clock.now() - keep_seconds
        for key in [k for k, s in self._items.items() if s.expires_at < cutoff]:
            del self._items[key]

    def next_deadline(self, reauth_lead: float) -> float | None:
        now = self.clock.now()
        times: list[float] = []
        for item in self.active():
            times.append(item.expires_at)
            due = min(item.expires_at, item.authorized_until) - reauth_lead
            if item.lifecycle_sent_for != min(item.expires_at, item.authorized_until):
                times.append(due)
        future = [t for t in times if t > now]
        return min(future) if future else None


# ---- throttling ------------------------------------------------------------------------------


class RateLimiter:
    """Sliding-window request limit per key (Graph presence throttling: app + tenant) on the sandbox clock."""

    def __init__(self, clock: Clock, limit: int, window: float) -> None:
        self.clock = clock
        self.limit = limit
        self.window = window
        self._hits: dict[str, deque[float]] = {}

    def configure(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._hits.clear()

    def check(self, key: str) -> float | None:
        """Record one request; None if allowed, else seconds until one is allowed again."""
        now = self.clock.now()
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) >= self.limit:
            return max(hits[0] + self.window - now, 0.001)
        hits.append(now)
        return None
