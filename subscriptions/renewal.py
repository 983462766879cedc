"""Create, renew, roll and recreate one service account's presence subscription.

Graph's rules drive every branch (docs/protocols.md, "Presence subscriptions", "Lifecycle notifications"):

* a subscription lives at most 60 minutes, so it is PATCHed well before expiry, with a stable
  per-subscription jitter; a 404 on PATCH (or on the periodic GET) means it is gone, so it is
  created anew and resynced;
* its resource cannot change, so a shard whose user set changed is deleted and created again;
* one subscription per app per signed-in user: a 409 on create means an old one exists (for
  instance from a leader killed between create and record).  Its ``clientState`` cannot be read
  back, so it is deleted and ours is created;
* 401/403 gets one fresh token; a second refusal marks the account for the operator;
* ``reauthorizationRequired`` is answered at once with a PATCH carrying a newly issued token (a
  PATCH also reauthorizes).  Graph's ten-minute rule keeps a PATCH and a ``/reauthorize`` apart;
  the bridge never calls ``/reauthorize``, so nothing needs to wait.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from service.core.clock import Clock, SystemClock
from service.graph.certificates import CertificateStore, EncryptionCertificate
from service.graph.client import GraphClient, GraphError
from service.graph.clientstate import ClientStates, new_client_state
from subscriptions import metrics
from subscriptions.accounts import AccountState, ServiceAccounts
from subscriptions.records import SubscriptionRecord, SubscriptionRecords
from subscriptions.shards import digest
from subscriptions.tokens import Tokens

log = logging.getLogger(__name__)

T = TypeVar("T")


class Action(enum.StrEnum):
    NONE = "none"
    CREATED = "created"
    RECREATED = "recreated"
    RENEWED = "renewed"
    ROTATED = "rotated"
    REAUTHORIZED = "reauthorized"
    DELETED = "deleted"


@dataclass(frozen=True)
class Outcome:
    account: str
    action: Action
    subscription_id: str | None
    resync_needed: bool


class AccountBlocked(Exception):
    """Graph refuses the account even with a fresh token; an operator must act."""

    def __init__(self, account: str, status: int, code: str) -> None:
        self.account = account
        self.status = status
        self.code = code
        super().__init__(f"Graph refuses service account {account}: {status} {code}".rstrip())


def format_time(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")


def parse_time(value: Any) -> float:
    text = str(value).strip().replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:
        digits = "".join(c for c in rest if c.isdigit())
        text = f"{head}.{digits[:6].ljust(6, '0')}{rest[len(digits) :]}"
    parsed = dt.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def presence_resource(user_ids: Sequence[str]) -> str:
    quoted = ",".join(f"'{u}'" for u in sorted(user_ids))
    return f"/communications/presences?$filter=id in ({quoted})"


class Renewal:
    def __init__(
        self,
        graph: GraphClient,
        tokens: Tokens,
        accounts: ServiceAccounts,
        certificates: CertificateStore,
        client_states: ClientStates,
        records: SubscriptionRecords,
        *,
        public_base_url: str,
        clock: Clock | None = None,
        lifetime_seconds: float = 58 * 60,
        renew_before_seconds: float = 25 * 60,
        renew_jitter_seconds: float = 5 * 60,
        verify_interval_seconds: float = 5 * 60,
    ) -> None:
        self.graph = graph
        self.tokens = tokens
        self.accounts = accounts
        self.certificates = certificates
        self.client_states = client_states
        self.records = records
        base = public_base_url.rstrip("/")
        self.notification_url = f"{base}/graph/notifications"
        self.lifecycle_url = f"{base}/graph/lifecycle"
        self.clock: Clock = clock or SystemClock()
        self.lifetime = lifetime_seconds
        self.renew_before = renew_before_seconds
        self.renew_jitter = renew_jitter_seconds
        self.verify_interval = verify_interval_seconds

    # -- decisions ------------------------------------------------------------------------------

    def renew_due_at(self, record: SubscriptionRecord) -> float:
        return record.expires_at - self.renew_before - record.renew_jitter

    async def ensure(self, account: str, user_ids: Sequence[str], now: float) -> Outcome:
        """Bring the account's subscription in line with its shard; one Graph change at most."""
        account = account.lower()
        record = await self.records.get(account)
        if not user_ids:
            if record is not None and record.id is not None:
                await self._delete(account, record)
                await self.records.delete(account)
                return Outcome(account, Action.DELETED, None, False)
            if record is not None:
                await self.records.delete(account)
            return Outcome(account, Action.NONE, None, False)
        wanted = digest(user_ids)
        certificate = await self.certificates.current()
        if (
            record is None
            or record.id is None
            or record.recreate_requested
            or record.users_digest != wanted
            or record.expires_at <= now
        ):
            return await self._recreate(account, user_ids, record, certificate, now)
        if record.certificate_id != certificate.id:
            return await self._rotate(account, user_ids, record, certificate, now)
        if now >= self.renew_due_at(record):
            return await self._renew(account, user_ids, record, certificate, now, Action.RENEWED)
        if record.reauthorize_requested:
            return await self._renew(account, user_ids, record, certificate, now, Action.REAUTHORIZED)
        if now - record.verified_at >= self.verify_interval:
            # Graph says nothing when a subscription is deleted or expires early; asking now and
            # then bounds the gap to minutes instead of the time until the next renewal.
            if not await self._exists(account, record):
                log.warning("subscription %s of %s is gone; creating a new one", record.id, account)
                record.recreate_requested = True
                return await self._recreate(account, user_ids, record, certificate, now)
            record.verified_at = now
            await self.records.put(record)
        return Outcome(account, Action.NONE, record.id, record.resync_needed)

    async def _exists(self, account: str, record: SubscriptionRecord) -> bool:
        subscription_id = record.id

        async def get(token: str) -> bool:
            response = await self.graph.request(
                "GET", f"/v1.0/subscriptions/{subscription_id}", token=token, ok=(200, 404)
            )
            return response.status == 200

        return await self._as_account(account, get)

    # -- Graph calls ----------------------------------------------------------------------------

    async def _as_account(
        self, account: str, call: Callable[[str], Awaitable[T]], *, fresh: bool = False
    ) -> T:
        # The subscription is authorized as long as this token lives: it must outlast the next renewal.
        token = await self.tokens.delegated_token(
            account, force_refresh=fresh, min_lifetime_seconds=self.renew_before + 600
        )
        try:
            return await call(token)
        except GraphError as exc:
            if exc.status not in (401, 403):
                raise
        token = await self.tokens.delegated_token(account, force_refresh=True)
        try:
            return await call(token)
        except GraphError as exc:
            if exc.status not in (401, 403):
                raise
            await self.accounts.mark(
                account, AccountState.FORBIDDEN, f"{exc.status} {exc.code}: {exc.message}"
            )
            raise AccountBlocked(account, exc.status, exc.code) from None

    def _body(
        self, user_ids: Sequence[str], certificate: EncryptionCertificate, client_state: str, now: float
    ) -> dict[str, Any]:
        return {
            "changeType": "updated",
            "notificationUrl": self.notification_url,
            "lifecycleNotificationUrl": self.lifecycle_url,
            "resource": presence_resource(user_ids),
            "expirationDateTime": format_time(now + self.lifetime),
            "includeResourceData": True,
            "encryptionCertificate": certificate.graph_encoded(),
            "encryptionCertificateId": certificate.id,
            "clientState": client_state,
            "latestSupportedTlsVersion": "v1_2",
        }

    async def _delete(self, account: str, record: SubscriptionRecord) -> None:
        subscription_id = record.id
        if subscription_id is None:
            return

        async def delete(token: str) -> None:
            await self.graph.request(
                "DELETE", f"/v1.0/subscriptions/{subscription_id}", token=token, ok=(204, 200, 404)
            )

        await self._as_account(account, delete)
        await self.client_states.delete(subscription_id)
        metrics.SUBSCRIPTION_OPERATIONS.labels("delete", "ok").inc()

    async def _recreate(
        self,
        account: str,
        user_ids: Sequence[str],
        record: SubscriptionRecord | None,
        certificate: EncryptionCertificate,
        now: float,
    ) -> Outcome:
        had = record is not None and record.id is not None
        if record is None:
            record = SubscriptionRecord(account=account, renew_jitter=random.uniform(0, self.renew_jitter))
        # Intent first: a leader dying from here on leaves a record the next leader completes.
        record.recreate_requested = True
        record.resync_needed = True
        await self.records.put(record)
        if record.id is not None:
            await self._delete(account, record)
            record.id = None
            await self.records.put(record)
        client_state = new_client_state()
        body = self._body(user_ids, certificate, client_state, now)
        created = await self._create(account, body)
        subscription_id = str(created["id"])
        await self.client_states.set(subscription_id, client_state)
        record.id = subscription_id
        record.users_digest = digest(user_ids)
        record.user_count = len(user_ids)
        record.expires_at = parse_time(created.get("expirationDateTime", body["expirationDateTime"]))
        record.certificate_id = certificate.id
        record.created_at = now
        record.last_patch_at = now
        record.verified_at = now
        record.recreate_requested = False
        record.reauthorize_requested = False
        await self.records.put(record)
        action = Action.RECREATED if had else Action.CREATED
        metrics.SUBSCRIPTION_OPERATIONS.labels(action.value, "ok").inc()
        log.info(
            "subscription %s %s for %s (%d users)", subscription_id, action.value, account, len(user_ids)
        )
        return Outcome(account, action, subscription_id, True)

    async def _create(self, account: str, body: dict[str, Any]) -> dict[str, Any]:
        async def post(token: str) -> dict[str, Any]:
            response = await self.graph.request(
                "POST", "/v1.0/subscriptions", token=token, body=body, ok=(201, 200)
            )
            if not isinstance(response.body, dict) or "id" not in response.body:
                raise GraphError("POST", "/v1.0/subscriptions", response.status, "", "answer without an id")
            return response.body

        try:
            return await self._as_account(account, post)
        except GraphError as exc:
            if exc.status != 409:
                raise
        # One subscription per app per user: an older one of ours (its clientState unknown) is in the way.
        await self._replace_existing(account)
        metrics.SUBSCRIPTION_OPERATIONS.labels("adopt", "ok").inc()
        return await self._as_account(account, post)

    async def _replace_existing(self, account: str) -> None:
        async def list_all(token: str) -> list[dict[str, Any]]:
            response = await self.graph.request("GET", "/v1.0/subscriptions", token=token)
            items = response.body.get("value", []) if isinstance(response.body, dict) else []
            return [
                i for i in items if isinstance(i, dict) and "presences" in str(i.get("resource", "")).lower()
            ]

        for item in await self._as_account(account, list_all):
            stale_id = str(item["id"])

            async def delete(token: str, stale_id: str = stale_id) -> None:
                await self.graph.request(
                    "DELETE", f"/v1.0/subscriptions/{stale_id}", token=token, ok=(204, 200, 404)
                )

            await self._as_account(account, delete)
            await self.client_states.delete(stale_id)
            log.warning("deleted subscription %s of %s that blocked a new one (409)", stale_id, account)

    async def _patch(
        self, account: str, record: SubscriptionRecord, body: dict[str, Any], *, fresh: bool = False
    ) -> dict[str, Any] | None:
        """PATCH the subscription; None when Graph says it no longer exists."""
        subscription_id = record.id

        async def patch(token: str) -> dict[str, Any] | None:
            response = await self.graph.request(
                "PATCH", f"/v1.0/subscriptions/{subscription_id}", token=token, body=body, ok=(200, 404)
            )
            if response.status == 404:
                return None
            return response.body if isinstance(response.body, dict) else {}

        return await self._as_account(account, patch, fresh=fresh)

    async def _renew(
        self,
        account: str,
        user_ids: Sequence[str],
        record: SubscriptionRecord,
        certificate: EncryptionCertificate,
        now: float,
        action: Action,
    ) -> Outcome:
        body = {"expirationDateTime": format_time(now + self.lifetime)}
        # A reauthorizationRequired event means the bound token is ending: PATCH with a new one.
        answer = await self._patch(account, record, body, fresh=action is Action.REAUTHORIZED)
        if answer is None:
            metrics.SUBSCRIPTION_OPERATIONS.labels(action.value, "gone").inc()
            log.warning("subscription %s of %s is gone (404); creating a new one", record.id, account)
            record.recreate_requested = True
            return await self._recreate(account, user_ids, record, certificate, now)
        record.expires_at = parse_time(answer.get("expirationDateTime", body["expirationDateTime"]))
        record.last_patch_at = now
        record.verified_at = now
        record.reauthorize_requested = False
        await self.records.put(record)
        metrics.SUBSCRIPTION_OPERATIONS.labels(action.value, "ok").inc()
        return Outcome(account, action, record.id, record.resync_needed)

    async def _rotate(
        self,
        account: str,
        user_ids: Sequence[str],
        record: SubscriptionRecord,
        certificate: EncryptionCertificate,
        now: float,
    ) -> Outcome:
        body = {
            "expirationDateTime": format_time(now + self.lifetime),
            "encryptionCertificate": certificate.graph_encoded(),
            "encryptionCertificateId": certificate.id,
        }
        try:
            answer = await self._patch(account, record, body)
        except GraphError as exc:
            if exc.status != 400:
                raise
            # Graph (or a stricter version of it) refused to change the certificate in place.
            log.info("subscription %s refused a certificate PATCH; recreating it", record.id)
            record.recreate_requested = True
            return await self._recreate(account, user_ids, record, certificate, now)
        if answer is None:
            record.recreate_requested = True
            return await self._recreate(account, user_ids, record, certificate, now)
        record.expires_at = parse_time(answer.get("expirationDateTime", body["expirationDateTime"]))
        record.certificate_id = certificate.id
        record.last_patch_at = now
        record.verified_at = now
        record.reauthorize_requested = False
        await self.records.put(record)
        metrics.SUBSCRIPTION_OPERATIONS.labels("rotate", "ok").inc()
        log.info("subscription %s of %s now uses certificate %s", record.id, account, certificate.id)
        return Outcome(account, Action.ROTATED, record.id, record.resync_needed)
