"""Graph sandbox: Entra ID plus Microsoft Graph presence and change notifications, over TLS.

A faithful stand-in for what the bridge talks to (https://learn.microsoft.com/en-us/graph/): MSAL
gets tokens from it unmodified; ``/v1.0`` serves users, presence and subscriptions with Graph's rules
and error shapes; changes of a user's aggregated presence go out as encrypted rich notifications (with
``validationTokens`` signed by a key in the sandbox JWKS), retried with backoff; lifecycle events
warn before expiry and after revocation.  ``/_sandbox`` is the control API (docs/sandbox-graph.md).

Run it with ``presence-bridge sandbox graph`` (``add_arguments`` / ``run`` below) or, in tests,
with ``GraphSandbox(...).serve_in_thread()``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import re
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from service.core.tls import client_context
from service.graph.crypto import encrypt_content
from service.sandbox.clock import Clock
from service.sandbox.entra import (
    JSON_BODY_LIMIT,
    AccessContext,
    Account,
    AppRegistration,
    EntraTenant,
    TokenRejected,
)
from service.sandbox.entra_routes import entra_routes
from service.sandbox.graph_calls import GraphCall, GraphResult, GraphRoute, Handler, json_body, require
from service.sandbox.graph_control import control_routes
from service.sandbox.graph_delivery import Notifier, PendingItem, read_capped
from service.sandbox.graph_edge import EdgeMiddleware
from service.sandbox.graph_host import FaultBook, SandboxOptions
from service.sandbox.graph_presence import PresenceEndpoints
from service.sandbox.graph_queries import graph_response, select_fields, status_code_name, user_filter
from service.sandbox.graph_subscriptions import SubscriptionEndpoints
from service.sandbox.graphstate import GraphError, bad_request, format_datetime
from service.sandbox.presence_book import PresenceBook
from service.sandbox.subscription_book import RateLimiter, Subscription, SubscriptionBook
from service.sandbox.tls import CertificateAuthority
from service.web.body import BodyTooLarge, read_bounded
from service.web.server import ServerThread

log = logging.getLogger(__name__)

BATCH_MAX = 20
USERS_PAGE_DEFAULT = 100
USERS_PAGE_MAX = 999
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
VALIDATION_TOKEN_PREFIX = "Validation: Testing client application reachability for subscription Request-Id: "


# ---- the sandbox -----------------------------------------------------------------------------


class GraphSandbox:
    """State, Graph API, control API and delivery, assembled into one Starlette app."""

    def __init__(self, options: SandboxOptions | None = None, *, state_dir: Path) -> None:
        self.options = options or SandboxOptions()
        self.state_dir = state_dir
        self.clock = Clock(speed=self.options.clock_speed)
        # The last change notifications per user, for a control call to redeliver one late.
        self.sent: dict[str, collections.deque[tuple[str, PendingItem]]] = {}
        self.entra = EntraTenant(
            self.clock,
            tenant_id=self.options.tenant_id,
            domain=self.options.domain,
            signing_key=self.options.signing_key,
            access_token_lifetime=self.options.access_token_lifetime,
            device_code_interval=self.options.device_code_interval,
        )
        self.entra.add_app(
            AppRegistration(
                client_id=self.options.client_id,
                display_name="presence-bridge",
                client_secret=self.options.client_secret,
                application_permissions={"Presence.ReadWrite.All", "Presence.Read.All", "User.Read.All"},
                delegated_permissions={"Presence.Read.All", "User.Read"},
                # The console's sign-in (loopback: any port, as Entra allows for http://localhost).
                redirect_uris={"http://127.0.0.1/auth/callback", "http://localhost/auth/callback"},
            )
        )
        self.entra.revocation_listeners.append(self._authorization_revoked)
        self.presence = PresenceBook(self.clock, self._presence_changed)
        self.subscriptions = SubscriptionBook(self.clock)
        self.limiter = RateLimiter(
            self.clock, self.options.throttle_limit, self.options.throttle_window_seconds
        )
        self.faults = FaultBook()
        self.notifier = Notifier(self)
        self.base_url = ""
        self.ca = CertificateAuthority("presence-bridge Graph sandbox CA")
        self.ca_file = self.ca.write_ca(state_dir / "ca.crt")
        self.subscription_endpoints = SubscriptionEndpoints(self)
        self.presence_endpoints = PresenceEndpoints(self)
        self._routes = self._graph_routes()
        self._ticker: asyncio.Task[None] | None = None
        self.app = self._build_app()

    # ---- seeding -----------------------------------------------------------------------------

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
    ) -> Account:
        """Create a directory user; with a password it can sign in (a service account).

        ``mail`` defaults to the UPN; an empty ``mail`` means the user has none."""
        if user_id is not None and not _GUID.match(user_id):
            raise ValueError("a user id must be a GUID, as Entra object ids are")
        local = re.sub(r"[^a-z0-9.]+", ".", display_name.lower()).strip(".") or "user"
        upn = user_principal_name or (mail if mail else f"{local}@{self.options.domain}")
        given, _, surname = display_name.partition(" ")
        account = Account(
            id=(user_id or str(uuid.uuid4())).lower(),
            user_principal_name=upn,
            display_name=display_name,
            mail=(mail or None) if mail is not None else upn,
            proxy_addresses=tuple(proxy_addresses),
            given_name=given or None,
            surname=surname or None,
            password=password,
            mfa_required=mfa_required,
            app_roles=tuple(app_roles),
            groups=tuple(groups),
        )
        self.entra.add_account(account)
        self.presence.user(account.id)
        return account

    # ---- time --------------------------------------------------------------------------------

    def tick(self) -> None:
        """Publish time-based presence changes and due lifecycle events at the current time."""
        self.presence.refresh()
        now = self.clock.now()
        lead = self.options.reauthorization_lead_seconds
        for item in self.subscriptions.active():
            deadline = min(item.expires_at, item.authorized_until)
            if now >= deadline - lead and item.lifecycle_sent_for != deadline:
                item.lifecycle_sent_for = deadline
                self._send_lifecycle(item, "reauthorizationRequired")
        self.subscriptions.prune()

    def advance(self, seconds: float) -> float:
        """Move the clock forward, stopping at every deadline on the way so no transition is skipped."""
        target = self.clock.now() + seconds
        while True:
            deadlines = [
                d
                for d in (
                    self.presence.next_deadline(),
                    self.subscriptions.next_deadline(self.options.reauthorization_lead_seconds),
                )
                if d is not None
            ]
            step = min(deadlines) if deadlines else None
            if step is None or step > target:
                break
            self.clock.advance(max(0.0, step - self.clock.now()))
            self.tick()
        self.clock.advance(max(0.0, target - self.clock.now()))
        self.tick()
        return self.clock.now()

    async def _run_ticker(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:  # a bug in one tick must not stop time for the whole sandbox
                log.exception("sandbox tick failed")
            deadlines = [
                d
                for d in (
                    self.presence.next_deadline(),
                    self.subscriptions.next_deadline(self.options.reauthorization_lead_seconds),
                )
                if d is not None
            ]
            await self.clock.sleep_until(min([*deadlines, self.clock.now() + 60]))

    # ---- notifications -----------------------------------------------------------------------

    def _presence_changed(self, user_id: str, _entry: dict[str, Any]) -> None:
        if self.notifier.http is None:  # not serving yet (seeding): nobody can be subscribed
            return
        resource = None
        for item in self.subscriptions.covering(user_id):
            if item.silent:
                item.silenced_changes += 1
                continue
            if resource is None:
                resource = self.presence.snapshot(user_id)
            payload: dict[str, Any] = {
                "subscriptionId": item.id,
                "subscriptionExpirationDateTime": format_datetime(item.expires_at),
                "clientState": item.client_state,
                "changeType": "updated",
                "resource": f"communications/presences/{user_id}",
                "tenantId": item.tenant_id,
                "organizationId": item.tenant_id,
                "resourceData": {
                    "@odata.id": f"users/{user_id}/presence",
                    "@odata.type": "#microsoft.graph.presence",
                    "id": user_id,
                },
            }
            if item.include_resource_data and item.certificate is not None:
                content = {"@odata.id": f"users/{user_id}/presence", **resource}
                if not self.options.sequence_numbers:
                    content.pop("sequenceNumber", None)
                payload["encryptedContent"] = encrypt_content(
                    json.dumps(content).encode(), item.certificate, item.encryption_certificate_id or ""
                )
            pending = PendingItem(
                item.id, item.notification_url_app_id or item.app_id, item.include_resource_data, payload
            )
            self.sent.setdefault(user_id, collections.deque(maxlen=10)).append(
                (item.notification_url, pending)
            )
            self.notifier.enqueue(item.notification_url, "change", pending)

    def redeliver(self, user_id: str, back: int) -> bool:
        """Send the user's ``back``-th last change notification again, as a late Graph retry would."""
        sent = self.sent.get(user_id)
        if not sent or not 1 <= back <= len(sent):
            return False
        url, pending = sent[-back]
        self.notifier.enqueue(url, "change", pending)
        return True

    def _send_lifecycle(self, item: Subscription, event: str) -> None:
        if item.lifecycle_url is None or self.notifier.http is None:
            return
        payload = {
            "subscriptionId": item.id,
            "subscriptionExpirationDateTime": format_datetime(item.expires_at),
            "tenantId": item.tenant_id,
            "clientState": item.client_state,
            "lifecycleEvent": event,
        }
        self.notifier.enqueue(
            item.lifecycle_url, "lifecycle", PendingItem(item.id, item.app_id, False, payload)
        )

    def _authorization_revoked(self, client_id: str | None, user_id: str | None) -> None:
        for item in self.subscriptions.active():
            if (client_id is None or item.app_id == client_id) and (
                user_id is None or item.creator_id == user_id
            ):
                item.revoked = True
                self._send_lifecycle(item, "reauthorizationRequired")

    async def _validate_endpoint(self, url: str) -> None:
        """Endpoint validation: POST ?validationToken=…; 200, text/plain, body = the decoded token, in time.

        See https://learn.microsoft.com/en-us/graph/change-notifications-delivery-webhooks.
        """
        token = VALIDATION_TOKEN_PREFIX + str(uuid.uuid4())
        query = urllib.parse.urlencode({"validationToken": token}, quote_via=urllib.parse.quote)
        target = f"{url}{'&' if '?' in url else '?'}{query}"
        assert self.notifier.http is not None
        begin = time.perf_counter()
        try:
            async with self.notifier.http.post(
                target,
                data=b"",
                headers={"Content-Type": "text/plain; charset=utf-8"},
                timeout=aiohttp.ClientTimeout(total=self.options.handshake_timeout),
            ) as response:
                body = await read_capped(response)
                status = response.status
                reason = response.reason or str(status)
                content_type = response.headers.get("Content-Type", "")
        except TimeoutError:
            self.notifier.record_validation(
                url, None, (time.perf_counter() - begin) * 1000, "failed", "timeout"
            )
            raise GraphError(400, "ValidationError", "Subscription validation request timed out.") from None
        except aiohttp.ClientError as exc:
            self.notifier.record_validation(
                url, None, (time.perf_counter() - begin) * 1000, "failed", f"connection: {type(exc).__name__}"
            )
            raise GraphError(
                400,
                "ValidationError",
                "Subscription validation request failed. Notification endpoint must respond with 200 OK "
                "to validation request.",
            ) from None
        latency = (time.perf_counter() - begin) * 1000
        problem = None
        if status != 200:
            problem = (
                f"Subscription validation request failed. HTTP status code is '{reason.replace(' ', '')}'. "
                "Notification endpoint must respond with 200 OK to validation request."
            )
        elif not content_type.lower().startswith("text/plain"):
            problem = "Subscription validation request failed. Response must be of content type text/plain."
        elif body != token.encode():
            problem = (
                "Subscription validation request failed. Response must exactly match validationToken "
                "query parameter."
            )
        self.notifier.record_validation(url, status, latency, "failed" if problem else "validated", problem)
        if problem:
            raise GraphError(400, "ValidationError", problem)

    # ---- Graph API ---------------------------------------------------------------------------

    def _graph_routes(self) -> list[GraphRoute]:
        def route(method: str, pattern: str, handler: Handler, presence: bool = False) -> GraphRoute:
            return GraphRoute(method, re.compile(f"^{pattern}$", re.IGNORECASE), handler, presence)

        user = r"users/(?P<user>[^/]+)"
        return [
            route("GET", "users", self._list_users),
            route("GET", "me", self._get_user),
            route("GET", user, self._get_user),
            route("GET", f"{user}/presence", self.presence_endpoints.get_presence, True),
            route("GET", "me/presence", self.presence_endpoints.get_presence, True),
            route(
                "GET", r"communications/presences/(?P<user>[^/]+)", self.presence_endpoints.get_presence, True
            ),
            route(
                "POST",
                "communications/getPresencesByUserId",
                self.presence_endpoints.get_presences_by_id,
                True,
            ),
            route("POST", f"{user}/presence/setPresence", self.presence_endpoints.set_presence, True),
            route("POST", f"{user}/presence/clearPresence", self.presence_endpoints.clear_presence, True),
            route(
                "POST",
                f"{user}/presence/setUserPreferredPresence",
                self.presence_endpoints.set_preferred,
                True,
            ),
            route(
                "POST",
                f"{user}/presence/clearUserPreferredPresence",
                self.presence_endpoints.clear_preferred,
                True,
            ),
            route(
                "POST", f"{user}/presence/setStatusMessage", self.presence_endpoints.set_status_message, True
            ),
            route("POST", "subscriptions", self.subscription_endpoints.create_subscription),
            route("GET", "subscriptions", self.subscription_endpoints.list_subscriptions),
            route("GET", r"subscriptions/(?P<sid>[^/]+)", self.subscription_endpoints.get_subscription),
            route("PATCH", r"subscriptions/(?P<sid>[^/]+)", self.subscription_endpoints.patch_subscription),
            route("DELETE", r"subscriptions/(?P<sid>[^/]+)", self.subscription_endpoints.delete_subscription),
            route(
                "POST",
                r"subscriptions/(?P<sid>[^/]+)/reauthorize",
                self.subscription_endpoints.reauthorize_subscription,
            ),
        ]

    async def dispatch(self, call: GraphCall) -> GraphResult:
        """One Graph request (top level or inside ``$batch``): auth, throttling, faults, handler."""
        try:
            fault = self.faults.take(call.method, f"/v1.0/{call.path}")
            if fault is not None:
                if fault.stall_seconds:
                    await asyncio.sleep(fault.stall_seconds)
                if fault.status is not None:
                    headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
                    raise GraphError(
                        fault.status, status_code_name(fault.status), "Injected failure.", headers
                    )
            matched = [(r, m) for r in self._routes if (m := r.pattern.match(call.path))]
            if not matched:
                segment = call.path.split("/")[0] or call.path
                raise bad_request(f"Resource not found for the segment '{segment}'.")
            chosen = next(((r, m) for r, m in matched if r.method == call.method), None)
            if chosen is None:
                raise GraphError(405, "BadRequest", f"The HTTP method '{call.method}' is not allowed here.")
            graph_route, match = chosen
            ctx = self._authenticate(call)
            if graph_route.presence:
                wait = self.limiter.check(f"{ctx.app_id}/{ctx.tenant_id}")
                if wait is not None:
                    raise GraphError(
                        429,
                        "TooManyRequests",
                        "Too many requests. Please retry after the time given in Retry-After.",
                        {"Retry-After": str(max(1, math.ceil(wait)))},
                    )
            return await graph_route.handler(call, ctx, match)
        except GraphError as exc:
            headers = dict(exc.headers)
            if exc.status == 401:
                headers["WWW-Authenticate"] = (
                    'Bearer realm="", '
                    'authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", '
                    'client_id="00000003-0000-0000-c000-000000000000"'
                )
            return GraphResult(
                exc.status, exc.body(self.clock.utcnow(), call.headers.get("client-request-id")), headers
            )

    def _authenticate(self, call: GraphCall) -> AccessContext:
        scheme, _, token = call.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            token = ""
        try:
            return self.entra.verify_access_token(token.strip())
        except TokenRejected as exc:
            raise GraphError(401, "InvalidAuthenticationToken", str(exc)) from None

    def _account(self, ctx: AccessContext, match: re.Match[str]) -> Account:
        key = match.groupdict().get("user")
        if key is None:  # /me
            if ctx.app_only:
                raise bad_request("/me request is only valid with delegated authentication flow.")
            key = ctx.user_id or ""
        account = self.entra.find_account(urllib.parse.unquote(key).lower())
        if account is None:
            raise GraphError(
                404,
                "Request_ResourceNotFound",
                f"Resource '{key}' does not exist or one of its queried reference-property objects "
                "are not present.",
            )
        return account

    # users

    async def _list_users(self, call: GraphCall, ctx: AccessContext, _m: re.Match[str]) -> GraphResult:
        require(ctx, {"User.Read.All"}, {"User.Read.All", "User.ReadBasic.All"})
        accounts = list(self.entra.accounts.values())
        if "$filter" in call.query:
            accept = user_filter(call.query["$filter"])
            accounts = [a for a in accounts if accept(a)]
        accounts.sort(key=lambda a: a.user_principal_name.lower())
        try:
            top = int(call.query.get("$top", USERS_PAGE_DEFAULT))
            skip = int(call.query.get("$skiptoken", "0"))
        except ValueError:
            raise bad_request("Invalid value for $top or $skiptoken.") from None
        if not 1 <= top <= USERS_PAGE_MAX:
            raise bad_request(
                f"Invalid page size specified: '{top}'. Must be between 1 and {USERS_PAGE_MAX} inclusive."
            )
        page = accounts[skip : skip + top]
        select = [s.strip() for s in call.query.get("$select", "").split(",") if s.strip()]
        body: dict[str, Any] = {
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users",
            "value": [select_fields(a.graph_json(), select) for a in page],
        }
        if skip + top < len(accounts):
            params = {k: v for k, v in call.query.items() if k != "$skiptoken"}
            params["$skiptoken"] = str(skip + top)
            body["@odata.nextLink"] = f"{self.base_url}/v1.0/users?{urllib.parse.urlencode(params)}"
        return GraphResult(200, body)

    async def _get_user(self, call: GraphCall, ctx: AccessContext, match: re.Match[str]) -> GraphResult:
        account = self._account(ctx, match)
        if ctx.app_only or account.id != ctx.user_id:
            require(ctx, {"User.Read.All"}, {"User.Read.All", "User.ReadBasic.All"})
        else:
            require(ctx, set(), {"User.Read", "User.Read.All", "User.ReadBasic.All"})
        select = [s.strip() for s in call.query.get("$select", "").split(",") if s.strip()]
        body = {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users/$entity"}
        body.update(select_fields(account.graph_json(), select))
        return GraphResult(200, body)

    # presence reads

    async def batch(self, headers: Mapping[str, str], body: bytes) -> GraphResult:
        """``POST /v1.0/$batch``: at most 20 requests; each item is authorized and throttled alone."""
        now = self.clock.utcnow()
        client_request_id = headers.get("client-request-id")
        try:
            payload = json_body(GraphCall("POST", "$batch", {}, headers, body))
            requests_ = payload.get("requests")
            if not isinstance(requests_, list) or not requests_:
                raise bad_request("The batch request must contain a non-empty 'requests' array.")
            if len(requests_) > BATCH_MAX:
                raise bad_request(f"Number of batch request steps exceeds the maximum of {BATCH_MAX}.")
            ids = [r.get("id") if isinstance(r, dict) else None for r in requests_]
            if any(not isinstance(i, str) or not i for i in ids) or len(set(ids)) != len(ids):
                raise bad_request("Every batch request step needs a unique, non-empty id.")
        except GraphError as exc:
            return GraphResult(exc.status, exc.body(now, client_request_id))
        responses = []
        for step in requests_:
            responses.append(await self._batch_step(step, headers))
        return GraphResult(200, {"responses": responses})

    async def _batch_step(self, step: dict[str, Any], headers: Mapping[str, str]) -> dict[str, Any]:
        method = str(step.get("method", "GET")).upper()
        url = str(step.get("url", ""))
        split = urllib.parse.urlsplit(url)
        path = urllib.parse.unquote(split.path).lstrip("/")
        if path.lower().startswith("v1.0/"):
            path = path[5:]
        step_headers = {k.lower(): str(v) for k, v in (step.get("headers") or {}).items()}
        merged = {**step_headers, "authorization": headers.get("authorization", "")}
        if "client-request-id" in headers:
            merged.setdefault("client-request-id", headers["client-request-id"])
        raw_body = step.get("body")
        data = b"" if raw_body is None else json.dumps(raw_body).encode()
        if path.lower() == "$batch":
            result = GraphResult(
                400,
                GraphError(400, "BadRequest", "Nested batch requests are not supported.").body(
                    self.clock.utcnow(), None
                ),
            )
        else:
            query = dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True))
            result = await self.dispatch(GraphCall(method, path, query, merged, data))
        response: dict[str, Any] = {
            "id": step["id"],
            "status": result.status,
            "headers": dict(result.headers),
        }
        if result.body is not None:
            response["headers"].setdefault("Content-Type", "application/json")
            response["body"] = result.body
        return response

    # ---- HTTP app ----------------------------------------------------------------------------

    def _wake_ticker(self) -> None:
        # The ticker sleeps until the next deadline it knew of; a new subscription may come earlier.
        self.clock.advance(0)

    def _build_app(self) -> Starlette:
        sandbox = self

        @contextlib.asynccontextmanager
        async def lifespan(_app: Starlette) -> AsyncIterator[None]:
            ca_file = sandbox.options.delivery_ca_file or str(sandbox.ca_file)
            connector = aiohttp.TCPConnector(ssl=client_context(ca_file), limit=100)
            sandbox.notifier.http = aiohttp.ClientSession(connector=connector)
            sandbox._ticker = asyncio.ensure_future(sandbox._run_ticker())
            try:
                yield
            finally:
                sandbox._ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sandbox._ticker
                await sandbox.notifier.close()
                await sandbox.notifier.http.close()
                sandbox.notifier.http = None

        async def graph_endpoint(request: Request) -> Response:
            path = request.path_params["path"]
            headers = {k.lower(): v for k, v in request.headers.items()}
            body = await read_bounded(request, JSON_BODY_LIMIT)
            if path.lower() == "$batch" and request.method == "POST":
                fault = sandbox.faults.take("POST", "/v1.0/$batch")
                if fault is not None and fault.stall_seconds:
                    await asyncio.sleep(fault.stall_seconds)
                if fault is not None and fault.status is not None:
                    error = GraphError(fault.status, status_code_name(fault.status), "Injected failure.")
                    result = GraphResult(fault.status, error.body(sandbox.clock.utcnow(), None))
                else:
                    result = await sandbox.batch(headers, body)
            else:
                call = GraphCall(request.method, path, dict(request.query_params), headers, body)
                result = await sandbox.dispatch(call)
            return graph_response(result, headers.get("client-request-id"))

        routes = [
            *entra_routes(self.entra, lambda: sandbox.base_url),
            Route("/v1.0/{path:path}", graph_endpoint, methods=["GET", "POST", "PATCH", "DELETE", "PUT"]),
            *control_routes(self),
        ]

        async def too_large(_request: Request, _exc: Exception) -> Response:
            return JSONResponse(
                {"error": {"code": "RequestEntityTooLarge", "message": "The request body is too large."}},
                status_code=413,
            )

        return Starlette(routes=routes, lifespan=lifespan, exception_handlers={BodyTooLarge: too_large})

    def asgi(self) -> ASGIApp:
        """The app wrapped with body limits and failure injection for the Entra endpoints."""
        return EdgeMiddleware(self.app, self)

    def serve_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> ServerThread:
        """Start serving over TLS (certificate from the sandbox CA) on a background thread."""
        issued = self.ca.issue(sorted({host, "127.0.0.1", "localhost"}))
        cert_file, key_file = issued.write(self.state_dir, "server")
        server = ServerThread(self.asgi(), host=host, port=port, cert_file=cert_file, key_file=key_file)
        self.base_url = server.base_url
        server.start()
        return server
