"""What the parts of the Graph sandbox (endpoints, control API, delivery, edge) need of the whole.

The parts take a ``GraphHost`` instead of the ``GraphSandbox`` that assembles them, so they
import nothing above themselves; ``GraphSandbox`` is one.
"""

from __future__ import annotations

import fnmatch
import re
import secrets
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from service.sandbox.clock import Clock
from service.sandbox.entra import AccessContext, Account, EntraTenant, SigningKey
from service.sandbox.presence_book import PresenceBook
from service.sandbox.subscription_book import RateLimiter, Subscription, SubscriptionBook


@dataclass
class SandboxOptions:
    """Everything that can be tuned; the defaults are Graph's documented numbers."""

    tenant_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    domain: str = "sandbox.onmicrosoft.com"
    client_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(30), repr=False)
    control_token: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    # Outgoing TLS (handshakes, notifications) trusts this CA file; None = the sandbox's own CA.
    delivery_ca_file: str | None = None
    coalesce_seconds: float = 1.0
    max_items_per_post: int = 100
    handshake_timeout: float = 10.0
    delivery_timeout: float = 3.0
    retry_timeout: float = 10.0
    backoff_base_seconds: float = 10.0
    backoff_max_seconds: float = 1800.0
    max_attempts: int = 12
    retry_horizon_seconds: float = 4 * 3600.0
    reauthorization_lead_seconds: float = 15 * 60.0
    throttle_limit: int = 1500
    throttle_window_seconds: float = 30.0
    validation_token_version: str = "v2"
    access_token_lifetime: int = 3599
    device_code_interval: int = 5
    clock_speed: float = 1.0
    signing_key: SigningKey | None = None
    # Microsoft documents the decrypted presence payload with id, availability and activity only;
    # True adds the presence's sequenceNumber to it (a variant no document promises).
    sequence_numbers: bool = False


@dataclass
class Fault:
    id: str
    method: str
    path: str  # fnmatch pattern over the request path, e.g. /v1.0/users/*/presence
    remaining: int
    status: int | None
    stall_seconds: float
    retry_after: int | None

    def matches(self, method: str, path: str) -> bool:
        return self.remaining > 0 and self.method in ("*", method) and fnmatch.fnmatchcase(path, self.path)

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "method": self.method,
            "path": self.path,
            "remaining": self.remaining,
            "status": self.status,
            "stallSeconds": self.stall_seconds,
            "retryAfter": self.retry_after,
        }


class FaultBook:
    def __init__(self) -> None:
        self.items: list[Fault] = []

    def take(self, method: str, path: str) -> Fault | None:
        for fault in self.items:
            if fault.matches(method, path):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self.items.remove(fault)
                return fault
        return None


class DeliveryLog(Protocol):
    """What the control API reads of the notification deliveries."""

    log: deque[dict[str, Any]]

    @property
    def in_flight(self) -> int: ...


class GraphHost(Protocol):
    options: SandboxOptions
    clock: Clock
    entra: EntraTenant
    presence: PresenceBook
    subscriptions: SubscriptionBook
    limiter: RateLimiter
    faults: FaultBook
    base_url: str

    @property
    def notifier(self) -> DeliveryLog: ...

    def add_user(
        self,
        display_name: str,
        *,
        mail: str | None = None,
        user_principal_name: str | None = None,
        user_id: str | None = None,
        password: str | None = None,
        mfa_required: bool = False,
        proxy_addresses: tuple[str, ...] = (),
        app_roles: tuple[str, ...] = (),
        groups: tuple[str, ...] = (),
    ) -> Account: ...

    def advance(self, seconds: float) -> float: ...

    def redeliver(self, user_id: str, back: int) -> bool: ...

    def _send_lifecycle(self, item: Subscription, event: str) -> None: ...

    async def _validate_endpoint(self, url: str) -> None: ...

    def _account(self, ctx: AccessContext, match: re.Match[str]) -> Account: ...

    def _wake_ticker(self) -> None: ...
