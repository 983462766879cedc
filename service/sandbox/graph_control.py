"""The Graph sandbox's control API (``/_sandbox``, docs/sandbox-graph.md) and its injected faults."""

from __future__ import annotations

import hmac
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.sandbox.entra import (
    JSON_BODY_LIMIT,
    Account,
    AppRegistration,
)
from service.sandbox.graph_host import Fault, GraphHost
from service.sandbox.graphstate import GraphError, bad_request, format_datetime, parse_duration
from service.sandbox.presence_book import ACTIVITIES, AVAILABILITIES, SESSION_MAX, SESSION_MIN
from service.sandbox.subscription_book import Subscription
from service.web.body import read_bounded


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


class ControlApi:
    """``/_sandbox/...``: drive the sandbox from tests and demos (bearer = the control token)."""

    def __init__(self, sandbox: GraphHost) -> None:
        self.sandbox = sandbox

    def guarded(
        self,
        handler: Callable[[Request, dict[str, Any]], Awaitable[Any]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            expected = self.sandbox.options.control_token.encode()
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

    def account(self, request: Request) -> Account:
        found = self.sandbox.entra.find_account(request.path_params["user"])
        if found is None:
            raise ControlError(404, "no such user")
        return found

    def user_json(self, item: Account) -> dict[str, Any]:
        result = item.graph_json()
        result["mfaRequired"] = item.mfa_required
        result["canSignIn"] = item.password is not None
        return result

    async def status(self, request: Request, body: dict[str, Any]) -> Any:
        return {
            "baseUrl": self.sandbox.base_url,
            "tenantId": self.sandbox.entra.tenant_id,
            "domain": self.sandbox.entra.domain,
            "clientId": self.sandbox.options.client_id,
            "now": format_datetime(self.sandbox.clock.now()),
            "users": len(self.sandbox.entra.accounts),
            "subscriptions": len(self.sandbox.subscriptions.active()),
            "deliveriesInFlight": self.sandbox.notifier.in_flight,
        }

    async def list_users(self, request: Request, body: dict[str, Any]) -> Any:
        return {"value": [self.user_json(a) for a in self.sandbox.entra.accounts.values()]}

    async def create_user(self, request: Request, body: dict[str, Any]) -> Any:
        display_name = body.get("displayName")
        if not isinstance(display_name, str) or not display_name:
            raise ControlError(400, "displayName is required")
        created = self.sandbox.add_user(
            display_name,
            mail=body.get("mail"),
            user_principal_name=body.get("userPrincipalName"),
            user_id=body.get("id"),
            password=body.get("password"),
            mfa_required=bool(body.get("mfaRequired", False)),
            proxy_addresses=tuple(_strings(body.get("proxyAddresses", []), "proxyAddresses")),
            app_roles=tuple(_strings(body.get("appRoles", []), "appRoles")),
            groups=tuple(_strings(body.get("groups", []), "groups")),
        )
        return self.user_json(created)

    async def update_user(self, request: Request, body: dict[str, Any]) -> Any:
        item = self.account(request)
        if "mfaRequired" in body:
            item.mfa_required = bool(body["mfaRequired"])
        if "password" in body:
            item.password = body["password"]
            # A password change invalidates refresh tokens, as in Entra.
            self.sandbox.entra.revoke_sessions(item.id)
        if "outOfOffice" in body:
            self.sandbox.presence.set_out_of_office(
                item.id, bool(body["outOfOffice"]), body.get("outOfOfficeMessage")
            )
        return self.user_json(item)

    async def put_session(self, request: Request, body: dict[str, Any]) -> Any:
        item = self.account(request)
        availability, activity = body.get("availability"), body.get("activity")
        if availability not in AVAILABILITIES or activity not in ACTIVITIES:
            raise ControlError(400, "availability/activity must be Graph values (e.g. Busy/InAMeeting)")
        seconds = body.get("expiresInSeconds")
        self.sandbox.presence.set_session(
            item.id,
            request.path_params["session"],
            kind="teams",
            availability=availability,
            activity=activity,
            duration=None if seconds is None else float(seconds),
            cause=f"Teams client {request.path_params['session']}",
        )
        return {
            "sessions": self.sandbox.presence.sessions(item.id),
            "presence": self.sandbox.presence.resource(item.id),
        }

    async def delete_session(self, request: Request, body: dict[str, Any]) -> Any:
        item = self.account(request)
        session = request.path_params["session"]
        if not self.sandbox.presence.clear_session(item.id, session, f"Teams client {session} closed"):
            raise ControlError(404, "no such session")
        return {
            "sessions": self.sandbox.presence.sessions(item.id),
            "presence": self.sandbox.presence.resource(item.id),
        }

    async def get_sessions(self, request: Request, body: dict[str, Any]) -> Any:
        item = self.account(request)
        return {
            "sessions": self.sandbox.presence.sessions(item.id),
            "presence": self.sandbox.presence.resource(item.id),
        }

    async def redeliver(self, request: Request, body: dict[str, Any]) -> Any:
        """Send an earlier change notification of the user again (a late Graph retry)."""
        item = self.account(request)
        back = body.get("back", 2)
        if not isinstance(back, int) or isinstance(back, bool) or back < 1:
            raise ControlError(400, "back must be a whole number from 1 (the last notification)")
        if not self.sandbox.redeliver(item.id, back):
            raise ControlError(404, f"no {back}. last change notification of this user to redeliver")
        return {"userId": item.id, "redelivered": back}

    async def history(self, request: Request, body: dict[str, Any]) -> Any:
        item = self.account(request)
        self.sandbox.presence.refresh(item.id)
        return {"userId": item.id, "value": self.sandbox.presence.history(item.id)}

    async def revoke_sessions(self, request: Request, body: dict[str, Any]) -> Any:
        item = self.account(request)
        self.sandbox.entra.revoke_sessions(item.id)
        return None

    async def list_apps(self, request: Request, body: dict[str, Any]) -> Any:
        return {"value": [a.public() for a in self.sandbox.entra.apps.values()]}

    async def create_app(self, request: Request, body: dict[str, Any]) -> Any:
        app = AppRegistration(
            client_id=str(body.get("clientId") or uuid.uuid4()),
            display_name=str(body.get("displayName") or "sandbox app"),
            client_secret=body.get("clientSecret"),
            application_permissions=set(body.get("applicationPermissions", [])),
            delegated_permissions=set(body.get("delegatedPermissions", [])),
            public_client=bool(body.get("publicClient", True)),
        )
        self.sandbox.entra.add_app(app)
        return app.public()

    async def update_app(self, request: Request, body: dict[str, Any]) -> Any:
        app = self.sandbox.entra.apps.get(request.path_params["client_id"])
        if app is None:
            raise ControlError(404, "no such app")
        if "applicationPermissions" in body:
            app.application_permissions = set(body["applicationPermissions"])
        if "delegatedPermissions" in body:
            app.delegated_permissions = set(body["delegatedPermissions"])
        if "publicClient" in body:
            app.public_client = bool(body["publicClient"])
        return app.public()

    def consent_target(self, body: dict[str, Any]) -> tuple[str, str | None]:
        client_id = body.get("clientId") or self.sandbox.options.client_id
        if client_id not in self.sandbox.entra.apps:
            raise ControlError(404, "no such app")
        user = body.get("user")
        if user is None:
            return client_id, None
        found = self.sandbox.entra.find_account(str(user))
        if found is None:
            raise ControlError(404, "no such user")
        return client_id, found.id

    async def revoke_consent(self, request: Request, body: dict[str, Any]) -> Any:
        client_id, user_id = self.consent_target(body)
        self.sandbox.entra.revoke_consent(client_id, user_id)
        return None

    async def grant_consent(self, request: Request, body: dict[str, Any]) -> Any:
        client_id, user_id = self.consent_target(body)
        self.sandbox.entra.grant_consent(client_id, user_id)
        return None

    async def approve_device(self, request: Request, body: dict[str, Any]) -> Any:
        found = self.sandbox.entra.find_account(str(body.get("user", "")))
        if found is None:
            raise ControlError(404, "no such user")
        try:
            self.sandbox.entra.approve_device_code(request.path_params["code"], found.id)
        except KeyError:
            raise ControlError(404, "no pending device code with that user code") from None
        return None

    async def decline_device(self, request: Request, body: dict[str, Any]) -> Any:
        try:
            self.sandbox.entra.decline_device_code(request.path_params["code"])
        except KeyError:
            raise ControlError(404, "no pending device code with that user code") from None
        return None

    async def rotate_keys(self, request: Request, body: dict[str, Any]) -> Any:
        return {"kid": self.sandbox.entra.rotate_signing_key().kid}

    async def list_subscriptions(self, request: Request, body: dict[str, Any]) -> Any:
        now = self.sandbox.clock.now()
        return {"value": [s.control_json(now) for s in self.sandbox.subscriptions.all()]}

    def subscription(self, request: Request) -> Subscription:
        found = self.sandbox.subscriptions.get(request.path_params["sid"])
        if found is None:
            raise ControlError(404, "no such subscription")
        return found

    async def expire_subscription(self, request: Request, body: dict[str, Any]) -> Any:
        found = self.subscription(request)
        found.expires_at = min(found.expires_at, self.sandbox.clock.now())
        return found.control_json(self.sandbox.clock.now())

    async def silence_subscription(self, request: Request, body: dict[str, Any]) -> Any:
        found = self.subscription(request)
        silent = body.get("silent", True)
        if not isinstance(silent, bool):
            raise ControlError(400, "silent must be true or false")
        found.silent = silent
        return found.control_json(self.sandbox.clock.now())

    async def delete_subscription(self, request: Request, body: dict[str, Any]) -> Any:
        self.subscription(request).deleted = True
        return None

    async def lifecycle_now(self, request: Request, body: dict[str, Any]) -> Any:
        found = self.subscription(request)
        if found.lifecycle_url is None:
            raise ControlError(409, "the subscription has no lifecycleNotificationUrl")
        self.sandbox._send_lifecycle(found, "reauthorizationRequired")
        return None

    async def list_faults(self, request: Request, body: dict[str, Any]) -> Any:
        return {"value": [f.public() for f in self.sandbox.faults.items]}

    async def add_fault(self, request: Request, body: dict[str, Any]) -> Any:
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
        self.sandbox.faults.items.append(fault)
        return fault.public()

    async def clear_faults(self, request: Request, body: dict[str, Any]) -> Any:
        self.sandbox.faults.items.clear()
        return None

    def clock_json(self) -> dict[str, Any]:
        return {
            "now": format_datetime(self.sandbox.clock.now()),
            "epoch": self.sandbox.clock.now(),
            "offsetSeconds": self.sandbox.clock.offset,
            "speed": self.sandbox.clock.speed,
        }

    async def get_clock(self, request: Request, body: dict[str, Any]) -> Any:
        return self.clock_json()

    async def advance_clock(self, request: Request, body: dict[str, Any]) -> Any:
        seconds = float(body.get("seconds", 0))
        if seconds < 0:
            raise ControlError(400, "the clock only moves forward")
        self.sandbox.advance(seconds)
        return self.clock_json()

    async def set_clock(self, request: Request, body: dict[str, Any]) -> Any:
        if "speed" in body:
            self.sandbox.clock.set_speed(float(body["speed"]))
        return self.clock_json()

    async def settings(self, request: Request, body: dict[str, Any]) -> Any:
        options = self.sandbox.options
        if "throttleLimit" in body or "throttleWindowSeconds" in body:
            options.throttle_limit = int(body.get("throttleLimit", options.throttle_limit))
            options.throttle_window_seconds = float(
                body.get("throttleWindowSeconds", options.throttle_window_seconds)
            )
            self.sandbox.limiter.configure(options.throttle_limit, options.throttle_window_seconds)
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

    async def deliveries(self, request: Request, body: dict[str, Any]) -> Any:
        since = int(request.query_params.get("since", "0"))
        return {
            "inFlight": self.sandbox.notifier.in_flight,
            "value": [e for e in self.sandbox.notifier.log if e["id"] > since],
        }


def control_routes(sandbox: GraphHost) -> list[Route]:
    """The control API's routes over ``sandbox``."""
    api = ControlApi(sandbox)

    def r(path: str, handler: Callable[[Request, dict[str, Any]], Awaitable[Any]], method: str) -> Route:
        return Route(f"/_sandbox{path}", api.guarded(handler), methods=[method])

    return [
        r("/status", api.status, "GET"),
        r("/users", api.list_users, "GET"),
        r("/users", api.create_user, "POST"),
        r("/users/{user}", api.update_user, "PATCH"),
        r("/users/{user}/sessions", api.get_sessions, "GET"),
        r("/users/{user}/sessions/{session}", api.put_session, "PUT"),
        r("/users/{user}/sessions/{session}", api.delete_session, "DELETE"),
        r("/users/{user}/presence-history", api.history, "GET"),
        r("/users/{user}/redeliver", api.redeliver, "POST"),
        r("/users/{user}/revoke-sessions", api.revoke_sessions, "POST"),
        r("/apps", api.list_apps, "GET"),
        r("/apps", api.create_app, "POST"),
        r("/apps/{client_id}", api.update_app, "PATCH"),
        r("/consent/revoke", api.revoke_consent, "POST"),
        r("/consent/grant", api.grant_consent, "POST"),
        r("/device-codes/{code}/approve", api.approve_device, "POST"),
        r("/device-codes/{code}/decline", api.decline_device, "POST"),
        r("/signing-keys/rotate", api.rotate_keys, "POST"),
        r("/subscriptions", api.list_subscriptions, "GET"),
        r("/subscriptions/{sid}/expire", api.expire_subscription, "POST"),
        r("/subscriptions/{sid}/silence", api.silence_subscription, "POST"),
        r("/subscriptions/{sid}", api.delete_subscription, "DELETE"),
        r("/subscriptions/{sid}/reauthorization-required", api.lifecycle_now, "POST"),
        r("/faults", api.list_faults, "GET"),
        r("/faults", api.add_fault, "POST"),
        r("/faults", api.clear_faults, "DELETE"),
        r("/clock", api.get_clock, "GET"),
        r("/clock", api.set_clock, "PUT"),
        r("/clock/advance", api.advance_clock, "POST"),
        r("/settings", api.settings, "PUT"),
        r("/deliveries", api.deliveries, "GET"),
    ]


def _strings(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ControlError(400, f"{name} must be a list of strings")
    return list(value)
