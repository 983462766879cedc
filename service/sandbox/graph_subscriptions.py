"""The Graph sandbox's /subscriptions endpoints: create, list, get, renew, reauthorize, delete."""

from __future__ import annotations

import math
import re
import uuid
from typing import Any

from service.sandbox.entra import (
    AccessContext,
)
from service.sandbox.graph_calls import GraphCall, GraphResult, forbidden, json_body
from service.sandbox.graph_host import GraphHost
from service.sandbox.graphstate import GraphError, bad_request
from service.sandbox.subscription_book import (
    CERTIFICATE_ID_MAX,
    CLIENT_STATE_MAX,
    REAUTHORIZE_PATCH_GAP,
    Subscription,
    expiration,
    https_url,
    parse_certificate,
    parse_presence_resource,
)


class SubscriptionEndpoints:
    """The subscription handlers of the sandbox's Graph routes, on the sandbox's state."""

    def __init__(self, sandbox: GraphHost) -> None:
        self.sandbox = sandbox

    def require_subscription_auth(self, ctx: AccessContext, operation: str) -> str:
        """Presence subscriptions are delegated-only, with Presence.Read.All, still consented."""
        if ctx.app_only or ctx.user_id is None:
            raise GraphError(
                403,
                "ExtensionError",
                f"Operation: {operation}; Exception: [Status Code: Forbidden; Reason: The request is not "
                "authorized for this user or application. Application permissions are not supported for "
                "presence subscriptions.]",
            )
        if "Presence.Read.All" not in ctx.scopes:
            raise forbidden(ctx, set(), {"Presence.Read.All"})
        account = self.sandbox.entra.accounts.get(ctx.user_id)
        if (
            account is None
            or not self.sandbox.entra.has_consent(ctx.app_id, ctx.user_id)
            or ctx.issued_at < account.tokens_valid_from
        ):
            raise GraphError(
                403,
                "ExtensionError",
                f"Operation: {operation}; Exception: [Status Code: Forbidden; Reason: The request is not "
                "authorized for this user or application.]",
            )
        return ctx.user_id

    async def create_subscription(
        self, call: GraphCall, ctx: AccessContext, _m: re.Match[str]
    ) -> GraphResult:
        creator = self.require_subscription_auth(ctx, "Create")
        body = json_body(call)
        now = self.sandbox.clock.now()
        change_type = body.get("changeType")
        if not isinstance(change_type, str) or not change_type:
            raise bad_request(
                "changeType is a required property for subscription creation.", "InvalidRequest"
            )
        notification_url = https_url(body.get("notificationUrl"), "notificationUrl")
        user_ids = parse_presence_resource(body.get("resource"))
        types = [t.strip() for t in change_type.split(",")]
        if types != ["updated"]:
            raise bad_request(
                f"The changeType '{change_type}' is not supported for presence; only 'updated' is.",
                "InvalidRequest",
            )
        lifecycle_url = body.get("lifecycleNotificationUrl")
        if lifecycle_url is not None:
            lifecycle_url = https_url(lifecycle_url, "lifecycleNotificationUrl")
        expires_at = expiration(body.get("expirationDateTime"), now)
        client_state = body.get("clientState")
        if client_state is not None and (
            not isinstance(client_state, str) or len(client_state) > CLIENT_STATE_MAX
        ):
            raise bad_request(
                f"clientState must be a string of at most {CLIENT_STATE_MAX} characters.", "InvalidRequest"
            )
        include = body.get("includeResourceData", False)
        if not isinstance(include, bool):
            raise bad_request("includeResourceData must be a boolean.", "InvalidRequest")
        certificate = None
        certificate_text = body.get("encryptionCertificate")
        certificate_id = body.get("encryptionCertificateId")
        if include or certificate_text is not None:
            certificate = parse_certificate(certificate_text)
            if (
                not isinstance(certificate_id, str)
                or not certificate_id
                or len(certificate_id) > CERTIFICATE_ID_MAX
            ):
                raise bad_request(
                    "encryptionCertificateId is required when includeResourceData is true "
                    f"(at most {CERTIFICATE_ID_MAX} characters)."
                )
        tls = body.get("latestSupportedTlsVersion", "v1_2")
        if tls not in ("v1_0", "v1_1", "v1_2", "v1_3"):
            raise bad_request(f"Invalid latestSupportedTlsVersion '{tls}'.", "InvalidRequest")
        url_app_id = body.get("notificationUrlAppId")
        if url_app_id is not None and not isinstance(url_app_id, str):
            raise bad_request("notificationUrlAppId must be a string.", "InvalidRequest")
        self.check_conflict(ctx.app_id, creator)
        await self.sandbox._validate_endpoint(notification_url)
        if lifecycle_url is not None:
            await self.sandbox._validate_endpoint(lifecycle_url)
        self.check_conflict(ctx.app_id, creator)
        item = Subscription(
            id=str(uuid.uuid4()),
            app_id=ctx.app_id,
            tenant_id=self.sandbox.entra.tenant_id,
            creator_id=creator,
            resource=str(body["resource"]),
            user_ids=user_ids,
            change_type="updated",
            notification_url=notification_url,
            lifecycle_url=lifecycle_url,
            expires_at=expires_at,
            client_state=client_state,
            include_resource_data=include,
            encryption_certificate=certificate_text if certificate is not None else None,
            encryption_certificate_id=certificate_id if certificate is not None else None,
            certificate=certificate,
            latest_tls=str(tls),
            notification_url_app_id=url_app_id,
            authorized_until=ctx.expires_at,
        )
        self.sandbox.subscriptions.add(item)
        self.sandbox._wake_ticker()
        return GraphResult(201, item.graph_json(with_client_state=True))

    def check_conflict(self, app_id: str, creator: str) -> None:
        existing = self.sandbox.subscriptions.conflict(app_id, creator)
        if existing is not None:
            raise GraphError(
                409,
                "ExtensionError",
                f"Subscription Id {existing.id} already exists for the requested combination",
            )

    def owned(self, ctx: AccessContext, match: re.Match[str]) -> Subscription:
        item = self.sandbox.subscriptions.get(match.group("sid"))
        now = self.sandbox.clock.now()
        visible = (
            item is not None
            and item.active(now)
            and item.app_id == ctx.app_id
            and (ctx.app_only or item.creator_id == ctx.user_id)
        )
        if item is None or not visible:
            raise GraphError(404, "ResourceNotFound", "The object was not found.")
        return item

    async def list_subscriptions(self, call: GraphCall, ctx: AccessContext, _m: re.Match[str]) -> GraphResult:
        now = self.sandbox.clock.now()
        items = [
            s
            for s in self.sandbox.subscriptions.all()
            if s.active(now) and s.app_id == ctx.app_id and (ctx.app_only or s.creator_id == ctx.user_id)
        ]
        return GraphResult(
            200,
            {
                "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions",
                "value": [without_context(s.graph_json(with_client_state=False)) for s in items],
            },
        )

    async def get_subscription(
        self, call: GraphCall, ctx: AccessContext, match: re.Match[str]
    ) -> GraphResult:
        return GraphResult(200, self.owned(ctx, match).graph_json(with_client_state=False))

    async def patch_subscription(
        self, call: GraphCall, ctx: AccessContext, match: re.Match[str]
    ) -> GraphResult:
        item = self.owned(ctx, match)
        self.require_subscription_auth(ctx, "Update")
        body = json_body(call)
        now = self.sandbox.clock.now()
        allowed = {
            "expirationDateTime",
            "notificationUrl",
            "encryptionCertificate",
            "encryptionCertificateId",
        }
        if "lifecycleNotificationUrl" in body:
            raise bad_request(
                "lifecycleNotificationUrl cannot be added or changed on an existing subscription; delete and "
                "recreate it.",
                "InvalidRequest",
            )
        unknown = set(body) - allowed
        if unknown:
            raise bad_request(f"Properties {', '.join(sorted(unknown))} cannot be updated.", "InvalidRequest")
        if not {"expirationDateTime", "notificationUrl"} & set(body):
            raise bad_request(
                "The update must contain expirationDateTime or notificationUrl.", "InvalidRequest"
            )
        self.check_gap(item.last_reauthorize_at, now, "update")
        expires_at = (
            expiration(body["expirationDateTime"], now) if "expirationDateTime" in body else item.expires_at
        )
        notification_url = item.notification_url
        if "notificationUrl" in body:
            notification_url = https_url(body["notificationUrl"], "notificationUrl")
            await self.sandbox._validate_endpoint(notification_url)
        if "encryptionCertificate" in body or "encryptionCertificateId" in body:
            certificate = parse_certificate(body.get("encryptionCertificate"))
            certificate_id = body.get("encryptionCertificateId")
            if (
                not isinstance(certificate_id, str)
                or not certificate_id
                or len(certificate_id) > CERTIFICATE_ID_MAX
            ):
                raise bad_request("encryptionCertificateId is required with encryptionCertificate.")
            item.certificate = certificate
            item.encryption_certificate = str(body["encryptionCertificate"])
            item.encryption_certificate_id = certificate_id
        item.expires_at = expires_at
        item.notification_url = notification_url
        # Lifecycle events (change-notifications-lifecycle-events): renewing also reauthorizes.
        item.authorized_until = ctx.expires_at
        item.revoked = False
        item.last_patch_at = now
        self.sandbox._wake_ticker()
        return GraphResult(200, item.graph_json(with_client_state=False))

    async def reauthorize_subscription(
        self, call: GraphCall, ctx: AccessContext, match: re.Match[str]
    ) -> GraphResult:
        item = self.owned(ctx, match)
        self.require_subscription_auth(ctx, "Reauthorize")
        now = self.sandbox.clock.now()
        self.check_gap(item.last_patch_at, now, "reauthorize")
        item.authorized_until = ctx.expires_at
        item.revoked = False
        item.last_reauthorize_at = now
        self.sandbox._wake_ticker()
        return GraphResult(204)

    @staticmethod
    def check_gap(other: float | None, now: float, operation: str) -> None:
        # Lifecycle events: reauthorize and PATCH of one subscription must be 10 minutes apart.
        if other is not None and now - other < REAUTHORIZE_PATCH_GAP:
            wait = math.ceil(REAUTHORIZE_PATCH_GAP - (now - other))
            counterpart = "updated" if operation == "reauthorize" else "reauthorized"
            raise GraphError(
                409,
                "ExtensionError",
                f"Subscription cannot be {operation}d within 10 minutes of being {counterpart}; "
                f"retry in {wait} seconds, or send a single PATCH with a new expirationDateTime.",
                {"Retry-After": str(wait)},
            )

    async def delete_subscription(
        self, call: GraphCall, ctx: AccessContext, match: re.Match[str]
    ) -> GraphResult:
        item = self.owned(ctx, match)
        item.deleted = True
        return GraphResult(204)


def without_context(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "@odata.context"}
