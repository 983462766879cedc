"""The Graph sandbox's model: presence sessions and their aggregation, subscriptions, rate limits.

Pure state on the controllable clock, no HTTP: the rules of Graph subscriptions
(https://learn.microsoft.com/en-us/graph/api/resources/subscription), the presence resource
(https://learn.microsoft.com/en-us/graph/api/resources/presence) and presence sessions with
their aggregation, timeouts and expiry (https://learn.microsoft.com/en-us/graph/api/presence-setpresence)
live here so they can be read in one place.  ``graph.py`` puts them on the wire.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
import urllib.parse
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from service.graph import presence
from service.sandbox.clock import Clock

# One vocabulary for the bridge and the sandbox: the shared lists of Graph's values.
AVAILABILITIES = frozenset(presence.AVAILABILITIES)
ACTIVITIES = frozenset(presence.ACTIVITIES)


def _pairs(*pairs: tuple[str, str]) -> frozenset[tuple[str, str]]:
    """Graph's fixed pair rules, checked against the shared vocabulary when the module loads."""
    for availability, activity in pairs:
        if availability not in AVAILABILITIES or activity not in ACTIVITIES:
            raise ValueError(f"{availability}/{activity} is not in service.graph.presence")
    return frozenset(pairs)


# setPresence and setUserPreferredPresence accept only these pairs:
# https://learn.microsoft.com/en-us/graph/api/presence-setpresence and .../presence-setuserpreferredpresence
SET_PRESENCE_COMBINATIONS = _pairs(
    ("Available", "Available"),
    ("Busy", "InACall"),
    ("Busy", "InAConferenceCall"),
    ("Away", "Away"),
    ("DoNotDisturb", "Presenting"),
)
PREFERRED_COMBINATIONS = _pairs(
    ("Available", "Available"),
    ("Busy", "Busy"),
    ("DoNotDisturb", "DoNotDisturb"),
    ("BeRightBack", "BeRightBack"),
    ("Away", "Away"),
    ("Offline", "OffWork"),
)
# setPresence: an Available session times out to idle after 5 minutes and to Away after 5 more.
IDLE_AFTER = 5 * 60
AWAY_AFTER = 10 * 60
IDLE_STATE = ("AvailableIdle", "Inactive")
AWAY_STATE = ("Away", "Away")
OFFLINE_STATE = ("Offline", "Offline")
SESSION_MIN = 5 * 60
SESSION_MAX = 4 * 3600
SESSION_DEFAULT = 5 * 60
# setPresence, aggregation: DoNotDisturb > Busy > Available > Away among sessions; the idle variants
# sit just below their active state, BeRightBack between Available and Away.
_RANK = {
    "DoNotDisturb": 90,
    "Busy": 80,
    "BusyIdle": 70,
    "Available": 60,
    "AvailableIdle": 50,
    "BeRightBack": 40,
    "Away": 30,
    "Offline": 10,
    "PresenceUnknown": 0,
}
# Activities that describe what the user does (a call, a meeting) survive out-of-office;
# the generic ones are replaced by OutOfOffice, as Teams shows "Available – Out of office".
_GENERIC_ACTIVITIES = frozenset(
    {"Available", "Away", "BeRightBack", "Busy", "DoNotDisturb", "Inactive", "Offline", "OffWork"}
)

PRESENCE_MAX_IDS = 650
SUBSCRIPTION_MAX_MINUTES = 60
SUBSCRIPTION_MIN_MINUTES = 45
CLIENT_STATE_MAX = 128
CERTIFICATE_ID_MAX = 128
REAUTHORIZE_PATCH_GAP = 10 * 60
HISTORY_LIMIT = 1000

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_DURATION = re.compile(
    r"^P(?:(?P<days>\d+)D)?(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)


class GraphError(Exception):
    """A Graph error answer: HTTP status plus the ``error.code`` and ``error.message`` of its body."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self, now: dt.datetime, client_request_id: str | None) -> dict[str, Any]:
        inner: dict[str, Any] = {
            "date": now.strftime("%Y-%m-%dT%H:%M:%S"),
            "request-id": str(uuid.uuid4()),
        }
        if client_request_id:
            inner["client-request-id"] = client_request_id
        return {"error": {"code": self.code, "message": self.message, "innerError": inner}}


def bad_request(message: str, code: str = "BadRequest") -> GraphError:
    return GraphError(400, code, message)


def parse_duration(value: str) -> float:
    """ISO-8601 duration (``PT5M``, ``PT1H``, ``P1D``) to seconds."""
    match = _DURATION.match(value.strip().upper()) if isinstance(value, str) else None
    if match is None or value.strip().upper() in ("P", "PT"):
        raise bad_request(f"The value '{value}' is not a valid duration.")
    parts = {k: float(v) for k, v in match.groupdict().items() if v is not None}
    return (
        parts.get("days", 0) * 86400
        + parts.get("hours", 0) * 3600
        + parts.get("minutes", 0) * 60
        + parts.get("seconds", 0)
    )


def parse_datetime(value: Any) -> float:
    """Graph's ``DateTimeOffset`` (seven fractional digits allowed) to epoch seconds."""
    if not isinstance(value, str) or not value:
        raise bad_request("Invalid DateTimeOffset value.")
    text = value.strip()
    match = re.match(r"^(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$", text)
    if match is None:
        raise bad_request(f"The value '{value}' is not a valid DateTimeOffset.")
    base, fraction, zone = match.groups()
    try:
        parsed = dt.datetime.fromisoformat(base + (zone or "Z").replace("Z", "+00:00"))
    except ValueError:
        raise bad_request(f"The value '{value}' is not a valid DateTimeOffset.") from None
    return parsed.timestamp() + (float(f"0.{fraction}") if fraction else 0.0)


def format_datetime(epoch: float) -> str:
    """Graph's wire format: UTC with seven fractional digits and ``Z``."""
    moment = dt.datetime.fromtimestamp(epoch, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}0Z"


# ---- presence --------------------------------------------------------------------------------


@dataclass
class Session:
    id: str
    kind: str  # "teams" (a Teams client, driven by the control API) or "application" (setPresence)
    availability: str
    activity: str
    updated_at: float
    expires_at: float | None

    def state(self, now: float) -> tuple[str, str] | None:
        """The session's own state at ``now``; None once it has expired and disappeared."""
        if self.expires_at is not None and now >= self.expires_at:
            return None
        if self.availability == "Available":
            quiet = now - self.updated_at
            if quiet >= AWAY_AFTER:
                return AWAY_STATE
            if quiet >= IDLE_AFTER:
                return IDLE_STATE
        return self.availability, self.activity

    def deadlines(self) -> list[float]:
        times = [] if self.expires_at is None else [self.expires_at]
        if self.availability == "Available":
            times += [self.updated_at + IDLE_AFTER, self.updated_at + AWAY_AFTER]
        return times

    def public(self, now: float) -> dict[str, Any]:
        state = self.state(now)
        return {
            "id": self.id,
            "kind": self.kind,
            "availability": state[0] if state else None,
            "activity": state[1] if state else None,
            "updatedDateTime": format_datetime(self.updated_at),
            "expirationDateTime": None if self.expires_at is None else format_datetime(self.expires_at),
        }


@dataclass
class Preferred:
    availability: str
    activity: str
    expires_at: float


@dataclass
class UserPresence:
    user_id: str
    sessions: dict[str, Session] = field(default_factory=dict)
    preferred: Preferred | None = None
    status_message: dict[str, Any] | None = None
    out_of_office: bool = False
    out_of_office_message: str | None = None
    sequence: int = 0
    published: tuple[Any, ...] | None = None
    history: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=HISTORY_LIMIT))


class PresenceBook:
    """Per-user presence sessions; ``refresh`` publishes every aggregated change once."""

    def __init__(self, clock: Clock, on_change: Callable[[str, dict[str, Any]], None]) -> None:
        self.clock = clock
        self._users: dict[str, UserPresence] = {}
        self._on_change = on_change

    def user(self, user_id: str) -> UserPresence:
        state = self._users.get(user_id)
        if state is None:
            state = self._users[user_id] = UserPresence(user_id)
            self._publish(state, self.clock.now(), "created")
        return state

    def set_session(
        self,
        user_id: str,
        session_id: str,
        *,
        kind: str,
        availability: str,
        activity: str,
        duration: float | None,
        cause: str,
    ) -> Session:
        now = self.clock.now()
        state = self.user(user_id)
        session = Session(
            id=session_id,
            kind=kind,
            availability=availability,
            activity=activity,
            updated_at=now,
            expires_at=None if duration is None else now + duration,
        )
        state.sessions[session_id] = session
        self.refresh(user_id, cause)
        return session

    def clear_session(self, user_id: str, session_id: str, cause: str) -> bool:
        state = self.user(user_id)
        now = self.clock.now()
        session = state.sessions.get(session_id)
        if session is None or session.state(now) is None:
            state.sessions.pop(session_id, None)
            return False
        del state.sessions[session_id]
        self.refresh(user_id, cause)
        return True

    def set_preferred(self, user_id: str, availability: str, activity: str, duration: float) -> None:
        state = self.user(user_id)
        state.preferred = Preferred(availability, activity, self.clock.now() + duration)
        self.refresh(user_id, "setUserPreferredPresence")

    def clear_preferred(self, user_id: str) -> None:
        self.user(user_id).preferred = None
        self.refresh(user_id, "clearUserPreferredPresence")

    def set_status_message(self, user_id: str, message: dict[str, Any] | None, cause: str) -> None:
        self.user(user_id).status_message = message
        self.refresh(user_id, cause)

    def set_out_of_office(self, user_id: str, active: bool, message: str | None) -> None:
        state = self.user(user_id)
        state.out_of_office = active
        state.out_of_office_message = message
        self.refresh(user_id, "outOfOffice")

    def aggregate(self, state: UserPresence, now: float) -> tuple[str, str]:
        live: list[tuple[Session, tuple[str, str]]] = []
        for session in state.sessions.values():
            current = session.state(now)
            if current is not None:
                live.append((session, current))
        if not live:
            # setUserPreferredPresence: preferred presence only applies while at least one session exists.
            availability, activity = OFFLINE_STATE
        elif state.preferred is not None and state.preferred.expires_at > now:
            availability, activity = state.preferred.availability, state.preferred.activity
        else:
            # Highest rank wins; among equals the most recently updated session.
            _, (availability, activity) = max(
                live, key=lambda item: (_RANK.get(item[1][0], 0), item[0].updated_at)
            )
        if state.out_of_office and activity in _GENERIC_ACTIVITIES:
            activity = "OutOfOffice"
        return availability, activity

    def resource(self, user_id: str) -> dict[str, Any]:
        """The presence resource as Graph returns it, after publishing any time-based change."""
        self.refresh(user_id, "clock")
        return self.snapshot(user_id)

    def snapshot(self, user_id: str) -> dict[str, Any]:
        """The presence resource as last published (what a rich notification encrypts)."""
        state = self.user(user_id)
        availability, activity = self.aggregate(state, self.clock.now())
        return {
            "@odata.type": "#microsoft.graph.presence",
            "id": user_id,
            "availability": availability,
            "activity": activity,
            "sequenceNumber": f"{state.sequence:020d}",
            "statusMessage": state.status_message,
            "outOfOfficeSettings": {
                "message": state.out_of_office_message,
                "isOutOfOffice": state.out_of_office,
            },
        }

    def refresh(self, user_id: str | None = None, cause: str = "clock") -> list[str]:
        """Recompute aggregates (all users, or one), publish changes; returns the changed ids."""
        now = self.clock.now()
        targets = [self.user(user_id)] if user_id is not None else list(self._users.values())
        changed: list[str] = []
        for state in targets:
            for session_id in [s.id for s in state.sessions.values() if s.state(now) is None]:
                del state.sessions[session_id]
            if state.preferred is not None and state.preferred.expires_at <= now:
                state.preferred = None
            if self._publish(state, now, cause):
                changed.append(state.user_id)
        return changed

    def next_deadline(self) -> float | None:
        times: list[float] = []
        now = self.clock.now()
        for state in self._users.values():
            for session in state.sessions.values():
                times.extend(t for t in session.deadlines() if t > now)
            if state.preferred is not None and state.preferred.expires_at > now:
                times.append(state.preferred.expires_at)
        return min(times) if times else None

    def sessions(self, user_id: str) -> list[dict[str, Any]]:
        now = self.clock.now()
        return [s.public(now) for s in self.user(user_id).sessions.values()]

    def history(self, user_id: str) -> list[dict[str, Any]]:
        return list(self.user(user_id).history)

    def _publish(self, state: UserPresence, now: float, cause: str) -> bool:
        availability, activity = self.aggregate(state, now)
        fingerprint = (
            availability,
            activity,
            repr(state.status_message),
            state.out_of_office,
            state.out_of_office_message,
        )
        if fingerprint == state.published:
            return False
        first = state.published is None
        state.published = fingerprint
        state.sequence += 1
        entry = {
            "sequenceNumber": f"{state.sequence:020d}",
            "availability": availability,
            "activity": activity,
            "at": format_datetime(now),
            "cause": cause,
        }
        state.history.append(entry)
        if not first:
            self._on_change(state.user_id, entry)
        return True


# ---- subscriptions ---------------------------------------------------------------------------


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
        if not _GUID.match(user_id):
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
        if len(item) < 2 or item[0] != "'" or item[-1] != "'" or not _GUID.match(item[1:-1]):
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


def normalize_ids(values: Iterable[Any]) -> list[str]:
    result: list[str] = []
    for value in values:
        if not isinstance(value, str) or not _GUID.match(value):
            raise bad_request(f"Invalid user id '{value}'.")
        result.append(value.lower())
    return result
