"""The Graph sandbox's control API (``/_sandbox``, docs/sandbox-graph.md) and its injected faults."""

from __future__ import annotations

import fnmatch
import hmac
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.sandbox.entra import (
    JSON_BODY_LIMIT,
    Account,
    AppRegistration,
)
from service.sandbox.graphstate import (
    ACTIVITIES,
    AVAILABILITIES,
    SESSION_MAX,
    SESSION_MIN,
    GraphError,
    Subscription,
    bad_request,
    format_datetime,
    parse_duration,
)
from service.web.body import read_bounded

if TYPE_CHECKING:
    from service.sandbox.graph import GraphSandbox


# ---- failure injection -----------------------------------------------------------------------


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


def session_duration(raw: Any, default: float) -> float:
    if raw is None:
        return default
    duration = parse_duration(str(raw))
    if not SESSION_MIN <= duration <= SESSION_MAX:
        raise bad_request("expirationDuration must be between PT5M and PT4H.")
    return duration


# ---- control API -----------------------------------------------------------------------------


class ControlError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def control_routes(sandbox: GraphSandbox) -> list[Route]:
    """``/_sandbox/...``: drive the sandbox from tests and demos (bearer = the control token)."""

    def guarded(
        handler: Callable[[Request, dict[str, Any]], Awaitable[Any]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            expected = sandbox.options.control_token.encode()
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
                return JSONResponse({"error": "a valid control token is required"}, status_code=401)
            raw = await read_bounded(request, JSON_BODY_LIMIT)
            try:
                body = json.loads(raw) if raw.strip() else {}
                if not isinstance(body, dict):
                    raise ControlError(400, "the body must be a JSON object")
                result = await handler(request, body)
            except json.JSONDecodeError:
                return JSONResponse({"error": "the body is not valid JSON"}, status_code=400)
            except ControlError as exc:
                return JSONResponse({"error": str(exc)}, status_code=exc.status)
            except (ValueError, TypeError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            except GraphError as exc:
                return JSONResponse({"error": exc.message}, status_code=exc.status)
            if result is None:
                return Response(status_code=204)
            return JSONResponse(result)

        return endpoint

    def account(request: Request) -> Account:
        found = sandbox.entra.find_account(request.path_params["user"])
        if found is None:
            raise ControlError(404, "no such user")
        return found

    def user_json(item: Account) -> dict[str, Any]:
        result = item.graph_json()
        result["mfaRequired"] = item.mfa_required
        result["canSignIn"] = item.password is not None
        return result

    async def status(request: Request, body: dict[str, Any]) -> Any:
        return {
            "baseUrl": sandbox.base_url,
            "tenantId": sandbox.entra.tenant_id,
            "domain": sandbox.entra.domain,
            "clientId": sandbox.options.client_id,
            "now": format_datetime(sandbox.clock.now()),
            "users": len(sandbox.entra.accounts),
            "subscriptions": len(sandbox.subscriptions.active()),
            "deliveriesInFlight": sandbox.notifier.in_flight,
        }

    async def list_users(request: Request, body: dict[str, Any]) -> Any:
        return {"value": [user_json(a) for a in sandbox.entra.accounts.values()]}

    async def create_user(request: Request, body: dict[str, Any]) -> Any:
        display_name = body.get("displayName")
        if not isinstance(display_name, str) or not display_name:
            raise ControlError(400, "displayName is required")
        created = sandbox.add_user(
            display_name,
            mail=body.get("mail"),
            user_principal_name=body.get("userPrincipalName"),
            user_id=body.get("id"),
            password=body.get("password"),
            mfa_required=bool(body.get("mfaRequired", False)),
        )
        return user_json(created)

    async def update_user(request: Request, body: dict[str, Any]) -> Any:
        item = account(request)
        if "mfaRequired" in body:
            item.mfa_required = bool(body["mfaRequired"])
        if "password" in body:
            item.password = body["password"]
            # A password change invalidates refresh tokens, as in Entra.
            sandbox.entra.revoke_sessions(item.id)
        if "outOfOffice" in body:
            sandbox.presence.set_out_of_office(
                item.id, bool(body["outOfOffice"]), body.get("outOfOfficeMessage")
            )
        return user_json(item)

    async def put_session(request: Request, body: dict[str, Any]) -> Any:
        item = account(request)
        availability, activity = body.get("availability"), body.get("activity")
        if availability not in AVAILABILITIES or activity not in ACTIVITIES:
            raise ControlError(400, "availability/activity must be Graph values (e.g. Busy/InAMeeting)")
        seconds = body.get("expiresInSeconds")
        sandbox.presence.set_session(
            item.id,
            request.path_params["session"],
            kind="teams",
            availability=availability,
            activity=activity,
            duration=None if seconds is None else float(seconds),
            cause=f"Teams client {request.path_params['session']}",
        )
        return {
            "sessions": sandbox.presence.sessions(item.id),
            "presence": sandbox.presence.resource(item.id),
        }

    async def delete_session(request: Request, body: dict[str, Any]) -> Any:
        item = account(request)
        session = request.path_params["session"]
        if not sandbox.presence.clear_session(item.id, session, f"Teams client {session} closed"):
            raise ControlError(404, "no such session")
        return {
            "sessions": sandbox.presence.sessions(item.id),
            "presence": sandbox.presence.resource(item.id),
        }

    async def get_sessions(request: Request, body: dict[str, Any]) -> Any:
        item = account(request)
        return {
            "sessions": sandbox.presence.sessions(item.id),
            "presence": sandbox.presence.resource(item.id),
        }

    async def history(request: Request, body: dict[str, Any]) -> Any:
        item = account(request)
        sandbox.presence.refresh(item.id)
        return {"userId": item.id, "value": sandbox.presence.history(item.id)}

    async def revoke_sessions(request: Request, body: dict[str, Any]) -> Any:
        item = account(request)
        sandbox.entra.revoke_sessions(item.id)
        return None

    async def list_apps(request: Request, body: dict[str, Any]) -> Any:
        return {"value": [a.public() for a in sandbox.entra.apps.values()]}

    async def create_app(request: Request, body: dict[str, Any]) -> Any:
        app = AppRegistration(
            client_id=str(body.get("clientId") or uuid.uuid4()),
            display_name=str(body.get("displayName") or "sandbox app"),
            client_secret=body.get("clientSecret"),
            application_permissions=set(body.get("applicationPermissions", [])),
            delegated_permissions=set(body.get("delegatedPermissions", [])),
            public_client=bool(body.get("publicClient", True)),
        )
        sandbox.entra.add_app(app)
        return app.public()

    async def update_app(request: Request, body: dict[str, Any]) -> Any:
        app = sandbox.entra.apps.get(request.path_params["client_id"])
        if app is None:
            raise ControlError(404, "no such app")
        if "applicationPermissions" in body:
            app.application_permissions = set(body["applicationPermissions"])
        if "delegatedPermissions" in body:
            app.delegated_permissions = set(body["delegatedPermissions"])
        if "publicClient" in body:
            app.public_client = bool(body["publicClient"])
        return app.public()

    def consent_target(body: dict[str, Any]) -> tuple[str, str | None]:
        client_id = body.get("clientId") or sandbox.options.client_id
        if client_id not in sandbox.entra.apps:
            raise ControlError(404, "no such app")
        user = body.get("user")
        if user is None:
            return client_id, None
        found = sandbox.entra.find_account(str(user))
        if found is None:
            raise ControlError(404, "no such user")
        return client_id, found.id

    async def revoke_consent(request: Request, body: dict[str, Any]) -> Any:
        client_id, user_id = consent_target(body)
        sandbox.entra.revoke_consent(client_id, user_id)
        return None

    async def grant_consent(request: Request, body: dict[str, Any]) -> Any:
        client_id, user_id = consent_target(body)
        sandbox.entra.grant_consent(client_id, user_id)
        return None

    async def approve_device(request: Request, body: dict[str, Any]) -> Any:
        found = sandbox.entra.find_account(str(body.get("user", "")))
        if found is None:
            raise ControlError(404, "no such user")
        try:
            sandbox.entra.approve_device_code(request.path_params["code"], found.id)
        except KeyError:
            raise ControlError(404, "no pending device code with that user code") from None
        return None

    async def decline_device(request: Request, body: dict[str, Any]) -> Any:
        try:
            sandbox.entra.decline_device_code(request.path_params["code"])
        except KeyError:
            raise ControlError(404, "no pending device code with that user code") from None
        return None

    async def rotate_keys(request: Request, body: dict[str, Any]) -> Any:
        return {"kid": sandbox.entra.rotate_signing_key().kid}

    async def list_subscriptions(request: Request, body: dict[str, Any]) -> Any:
        now = sandbox.clock.now()
        return {"value": [s.control_json(now) for s in sandbox.subscriptions.all()]}

    def subscription(request: Request) -> Subscription:
        found = sandbox.subscriptions.get(request.path_params["sid"])
        if found is None:
            raise ControlError(404, "no such subscription")
        return found

    async def expire_subscription(request: Request, body: dict[str, Any]) -> Any:
        found = subscription(request)
        found.expires_at = min(found.expires_at, sandbox.clock.now())
        return found.control_json(sandbox.clock.now())

    async def delete_subscription(request: Request, body: dict[str, Any]) -> Any:
        subscription(request).deleted = True
        return None

    async def lifecycle_now(request: Request, body: dict[str, Any]) -> Any:
        found = subscription(request)
        if found.lifecycle_url is None:
            raise ControlError(409, "the subscription has no lifecycleNotificationUrl")
        sandbox._send_lifecycle(found, "reauthorizationRequired")
        return None

    async def list_faults(request: Request, body: dict[str, Any]) -> Any:
        return {"value": [f.public() for f in sandbox.faults.items]}

    async def add_fault(request: Request, body: dict[str, Any]) -> Any:
        path = body.get("path")
        if not isinstance(path, str) or not path.startswith("/"):
            raise ControlError(400, "path must be an absolute request path or fnmatch pattern")
        status_value = body.get("status")
        stall = float(body.get("stallSeconds", 0))
        if status_value is None and stall <= 0:
            raise ControlError(400, "give a status, stallSeconds, or both")
        fault = Fault(
            id=str(uuid.uuid4()),
            method=str(body.get("method", "*")).upper(),
            path=path,
            remaining=int(body.get("count", 1)),
            status=None if status_value is None else int(status_value),
            stall_seconds=stall,
            retry_after=None if body.get("retryAfter") is None else int(body["retryAfter"]),
        )
        sandbox.faults.items.append(fault)
        return fault.public()

    async def clear_faults(request: Request, body: dict[str, Any]) -> Any:
        sandbox.faults.items.clear()
        return None

    def clock_json() -> dict[str, Any]:
        return {
            "now": format_datetime(sandbox.clock.now()),
            "epoch": sandbox.clock.now(),
            "offsetSeconds": sandbox.clock.offset,
            "speed": sandbox.clock.speed,
        }

    async def get_clock(request: Request, body: dict[str, Any]) -> Any:
        return clock_json()

    async def advance_clock(request: Request, body: dict[str, Any]) -> Any:
        seconds = float(body.get("seconds", 0))
        if seconds < 0:
            raise ControlError(400, "the clock only moves forward")
        sandbox.advance(seconds)
        return clock_json()

    async def set_clock(request: Request, body: dict[str, Any]) -> Any:
        if "speed" in body:
            sandbox.clock.set_speed(float(body["speed"]))
        return clock_json()

    async def settings(request: Request, body: dict[str, Any]) -> Any:
        options = sandbox.options
        if "throttleLimit" in body or "throttleWindowSeconds" in body:
            options.throttle_limit = int(body.get("throttleLimit", options.throttle_limit))
            options.throttle_window_seconds = float(
                body.get("throttleWindowSeconds", options.throttle_window_seconds)
            )
            sandbox.limiter.configure(options.throttle_limit, options.throttle_window_seconds)
        if "validationTokenVersion" in body:
            if body["validationTokenVersion"] not in ("v1", "v2"):
                raise ControlError(400, "validationTokenVersion is v1 or v2")
            options.validation_token_version = body["validationTokenVersion"]
        for key, attr in (
            ("coalesceSeconds", "coalesce_seconds"),
            ("deliveryTimeoutSeconds", "delivery_timeout"),
            ("retryTimeoutSeconds", "retry_timeout"),
            ("handshakeTimeoutSeconds", "handshake_timeout"),
            ("backoffBaseSeconds", "backoff_base_seconds"),
            ("reauthorizationLeadSeconds", "reauthorization_lead_seconds"),
        ):
            if key in body:
                setattr(options, attr, float(body[key]))
        if "maxAttempts" in body:
            options.max_attempts = int(body["maxAttempts"])
        return {
            "throttleLimit": options.throttle_limit,
            "throttleWindowSeconds": options.throttle_window_seconds,
            "validationTokenVersion": options.validation_token_version,
            "coalesceSeconds": options.coalesce_seconds,
            "deliveryTimeoutSeconds": options.delivery_timeout,
            "retryTimeoutSeconds": options.retry_timeout,
            "handshakeTimeoutSeconds": options.handshake_timeout,
            "backoffBaseSeconds": options.backoff_base_seconds,
            "maxAttempts": options.max_attempts,
            "reauthorizationLeadSeconds": options.reauthorization_lead_seconds,
        }

    async def deliveries(request: Request, body: dict[str, Any]) -> Any:
        since = int(request.query_params.get("since", "0"))
        return {
            "inFlight": sandbox.notifier.in_flight,
            "value": [e for e in sandbox.notifier.log if e["id"] > since],
        }

    def r(path: str, handler: Callable[[Request, dict[str, Any]], Awaitable[Any]], method: str) -> Route:
        return Route(f"/_sandbox{path}", guarded(handler), methods=[method])

    return [
        r("/status", status, "GET"),
        r("/users", list_users, "GET"),
        r("/users", create_user, "POST"),
        r("/users/{user}", update_user, "PATCH"),
        r("/users/{user}/sessions", get_sessions, "GET"),
        r("/users/{user}/sessions/{session}", put_session, "PUT"),
        r("/users/{user}/sessions/{session}", delete_session, "DELETE"),
        r("/users/{user}/presence-history", history, "GET"),
        r("/users/{user}/revoke-sessions", revoke_sessions, "POST"),
        r("/apps", list_apps, "GET"),
        r("/apps", create_app, "POST"),
        r("/apps/{client_id}", update_app, "PATCH"),
        r("/consent/revoke", revoke_consent, "POST"),
        r("/consent/grant", grant_consent, "POST"),
        r("/device-codes/{code}/approve", approve_device, "POST"),
        r("/device-codes/{code}/decline", decline_device, "POST"),
        r("/signing-keys/rotate", rotate_keys, "POST"),
        r("/subscriptions", list_subscriptions, "GET"),
        r("/subscriptions/{sid}/expire", expire_subscription, "POST"),
        r("/subscriptions/{sid}", delete_subscription, "DELETE"),
        r("/subscriptions/{sid}/reauthorization-required", lifecycle_now, "POST"),
        r("/faults", list_faults, "GET"),
        r("/faults", add_fault, "POST"),
        r("/faults", clear_faults, "DELETE"),
        r("/clock", get_clock, "GET"),
        r("/clock", set_clock, "PUT"),
        r("/clock/advance", advance_clock, "POST"),
        r("/settings", settings, "PUT"),
        r("/deliveries", deliveries, "GET"),
    ]
