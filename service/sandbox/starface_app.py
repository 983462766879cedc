"""HTTP face of the STARFACE sandbox: REST, OAuth token endpoint, UCI ``/xml-rpc`` and ``/control``.

Two Starlette apps share one ``Context``: the PBX app (what a real PBX serves, plus ``/control``)
and the control app, served on its own listener so the control API stays reachable while a fault
makes the PBX refuse connections.  Fault injection wraps only the PBX routes.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from service.sandbox.starface_context import Context as Context
from service.sandbox.starface_context import Faults, error_response
from service.sandbox.starface_control import control_routes
from service.sandbox.starface_model import Pbx
from service.sandbox.starface_records import (
    AuthenticationFailed,
    Callback,
    InvalidInput,
    NotFound,
    NotLoggedIn,
    OAuthError,
    User,
)
from service.sandbox.starface_wire import dumps_response as wire_response
from service.starface import protocol as sp
from service.starface.xmlrpc import DEFAULT_MAX_BYTES, XmlRpcError, dumps_fault, parse_call
from service.web.body import BodyTooLarge, read_bounded

MAX_JSON_BYTES = 16 * 1024
# [INF] Fault codes for what the contract leaves open; FAULT_NOT_LOGGED_IN is the shared constant.
FAULT_PARSE = -32700
FAULT_NO_SUCH_METHOD = -32601
FAULT_INVALID_PARAMS = -32602
# [INF] The fault a PBX might send for refused credentials instead of HTTP 401 (refusedLogin "fault").
FAULT_AUTHENTICATION = 401
FAULT_AUTHENTICATION_TEXT = "Authentication failed: wrong login ID or password"
SANDBOX_VERSION = "10.0.1.6"
XML = "text/xml; charset=utf-8"


# -- fault injection -----------------------------------------------------------------------------


class FaultMiddleware:
    """Applies the current faults to every PBX request; ``/control`` is never affected."""

    def __init__(self, app: ASGIApp, faults: Faults) -> None:
        self.app = app
        self.faults = faults

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or str(scope.get("path", "")).startswith("/control"):
            await self.app(scope, receive, send)
            return
        faults = self.faults
        if faults.down != "none":
            # "refuse" closes the listener; a request on a connection accepted just before gets 503 too.
            await Response("Service Unavailable", 503)(scope, receive, send)
            return
        if faults.slow_seconds > 0:
            await asyncio.sleep(faults.slow_seconds)
        if faults.errors > 0:
            faults.errors -= 1
            await Response("Internal Server Error", 500)(scope, receive, send)
            return
        if any(str(scope.get("path", "")).startswith(prefix) for prefix in faults.fail_paths):
            await Response("Internal Server Error", 500)(scope, receive, send)
            return
        await self.app(scope, receive, send)


# -- REST ------------------------------------------------------------------------------------------


def _version_ok(request: Request) -> bool:
    return request.headers.get(sp.REST_VERSION_HEADER) == sp.REST_VERSION


def _rest_user(ctx: Context, request: Request) -> User:
    authorization = request.headers.get("authorization", "")
    scheme, _, credential = authorization.partition(" ")
    if scheme.lower() == "bearer" and credential:
        return ctx.pbx.user_for_bearer(credential.strip())
    token = request.headers.get(sp.REST_TOKEN_HEADER)
    if token:
        return ctx.pbx.user_for_rest_token(token)
    raise AuthenticationFailed("no credentials")


def _rest(
    ctx: Context, handler: Callable[[Request, User], Response]
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        if not _version_ok(request):
            return error_response(400, f"missing or unsupported {sp.REST_VERSION_HEADER} header")
        try:
            user = _rest_user(ctx, request)
        except AuthenticationFailed:
            return error_response(401, "not authenticated")
        try:
            return handler(request, user)
        except NotFound as exc:
            return error_response(404, str(exc))

    return endpoint


def _rest_login_routes(ctx: Context) -> list[Route]:
    """``/rest/login``: the legacy nonce login and logout (docs/starface-wire.md, REST)."""
    pbx = ctx.pbx

    async def login_template(request: Request) -> Response:
        if not _version_ok(request):
            return error_response(400, f"missing or unsupported {sp.REST_VERSION_HEADER} header")
        return JSONResponse({"loginType": "Internal", "nonce": pbx.issue_nonce(), "secret": None})

    async def login(request: Request) -> Response:
        if not _version_ok(request):
            return error_response(400, f"missing or unsupported {sp.REST_VERSION_HEADER} header")
        try:
            body = json.loads(await read_bounded(request, MAX_JSON_BYTES))
        except BodyTooLarge:
            return error_response(413, "body too large")
        except ValueError:
            return error_response(400, "body is not JSON")
        if not isinstance(body, dict) or not all(
            isinstance(body.get(k), str) for k in ("loginType", "nonce", "secret")
        ):
            return error_response(400, "invalid login")
        try:
            token = pbx.rest_login(body["loginType"], body["nonce"], body["secret"])
        except AuthenticationFailed:
            return error_response(400, "invalid login")
        return JSONResponse({"token": token})

    async def logout(request: Request) -> Response:
        if not _version_ok(request):
            return error_response(400, f"missing or unsupported {sp.REST_VERSION_HEADER} header")
        token = request.headers.get(sp.REST_TOKEN_HEADER)
        if token:
            pbx.rest_logout(token)
        return Response(status_code=204)

    return [
        Route("/rest/login", login_template, methods=["GET"]),
        Route("/rest/login", login, methods=["POST"]),
        Route("/rest/login", logout, methods=["DELETE"]),
    ]


def _rest_routes(ctx: Context) -> list[Route]:
    pbx = ctx.pbx

    def users(request: Request, _: User) -> Response:
        search = request.query_params.get("searchTerm", "")
        return JSONResponse([u.rest_view() for u in pbx.users(search)])

    def me(_: Request, user: User) -> Response:
        return JSONResponse(user.rest_view())

    def one_user(request: Request, _: User) -> Response:
        return JSONResponse(pbx.user_by_id(request.path_params["userId"]).rest_view())

    def groups(request: Request, _: User) -> Response:
        search = request.query_params.get("searchTerm", "")
        return JSONResponse(
            [
                {
                    "id": g.id,
                    "groupname": g.name,
                    "groupinternalnumber": g.internal_number,
                    "groupexternalnumber": g.external_number,
                }
                for g in pbx.groups(search)
            ]
        )

    def one_group(request: Request, _: User) -> Response:
        group = pbx.group(request.path_params["groupid"])
        # Swagger ``Group``: members are the ``assignableUsers`` flagged ``assigned``.
        return JSONResponse(
            {
                "id": group.id,
                "groupId": group.group_id,
                "name": group.name,
                "chatGroup": False,
                "voicemail": False,
                "assignableNumbers": [],
                "assignableUsers": [
                    {
                        "id": u.id,
                        "firstname": u.first_name,
                        "lastname": u.family_name,
                        "assigned": u.login in group.members,
                    }
                    for u in pbx.users()
                ],
            }
        )

    def accounts(_: Request, __: User) -> Response:
        listed: list[dict[str, Any]] = [
            {
                "accountId": u.id,
                "type": "USER",
                "firstname": u.first_name,
                "lastname": u.family_name,
                "displayInformation": f"{u.display_name} ({u.number})",
                "primaryInternalPhoneNumber": u.number,
                "federationname": "",
                "local": True,
            }
            for u in pbx.users()
        ]
        listed += [
            {
                "accountId": g.id,
                "type": "GROUP",
                "firstname": "",
                "lastname": g.name,
                "displayInformation": f"{g.name} ({g.internal_number})",
                "primaryInternalPhoneNumber": g.internal_number,
                "federationname": "",
                "local": True,
            }
            for g in pbx.groups()
        ]
        return JSONResponse(listed)

    def version(_: Request, __: User) -> Response:
        return JSONResponse({"version": SANDBOX_VERSION})

    return [
        *_rest_login_routes(ctx),
        Route("/rest/users", _rest(ctx, users), methods=["GET"]),
        Route("/rest/users/me", _rest(ctx, me), methods=["GET"]),
        Route("/rest/users/{userId:int}", _rest(ctx, one_user), methods=["GET"]),
        Route("/rest/groups", _rest(ctx, groups), methods=["GET"]),
        Route("/rest/groups/{groupid:int}", _rest(ctx, one_group), methods=["GET"]),
        Route("/rest/accounts", _rest(ctx, accounts), methods=["GET"]),
        Route("/rest/server/version", _rest(ctx, version), methods=["GET"]),
    ]


# -- OAuth ---------------------------------------------------------------------------------------


def _oauth_route(ctx: Context) -> Route:
    async def token(request: Request) -> Response:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            return JSONResponse(
                {"error": "invalid_request", "error_description": "form body expected"}, status_code=400
            )
        try:
            raw = await read_bounded(request, MAX_JSON_BYTES)
            form = dict(urllib.parse.parse_qsl(raw.decode("utf-8"), strict_parsing=False))
        except BodyTooLarge:
            return JSONResponse({"error": "invalid_request", "error_description": "too large"}, 413)
        except UnicodeDecodeError:
            return JSONResponse({"error": "invalid_request", "error_description": "not UTF-8"}, 400)
        try:
            granted = ctx.pbx.oauth_token(form)
        except OAuthError as exc:
            return JSONResponse(
                {"error": exc.error, "error_description": exc.description}, status_code=exc.status
            )
        return JSONResponse(granted, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    return Route(sp.OAUTH_TOKEN_PATH, token, methods=["POST"])


# -- UCI -------------------------------------------------------------------------------------------


def _fault(code: int, message: str) -> Response:
    return Response(dumps_fault(code, message), media_type=XML)


def _callback_from(query: Mapping[str, str]) -> Callback | None:
    keys = (sp.UCI_CALLBACK_HOST, sp.UCI_CALLBACK_PORT, sp.UCI_CALLBACK_PATH, sp.UCI_CALLBACK_TYPE)
    values = [query.get(k) for k in keys]
    if not any(values):
        return None
    host, port, path, kind = values
    if not host or not port or not kind or path is None:
        raise InvalidInput("callback", "host, port, path and type are all needed")
    if kind not in ("http", "https"):
        raise InvalidInput("callback", "type must be http or https")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidInput("callback", "port must be 1..65535")
    return Callback(kind, host, int(port), path if path.startswith("/") else f"/{path}")


def _uci_route(ctx: Context) -> Route:
    pbx = ctx.pbx

    async def xml_rpc(request: Request) -> Response:
        query = request.query_params
        try:
            user = pbx.user_for_uci(query.get(sp.UCI_AUTH_PARAM), query.get(sp.UCI_JWT_PARAM))
        except AuthenticationFailed:
            if ctx.faults.refused_login == "fault":
                return _fault(FAULT_AUTHENTICATION, FAULT_AUTHENTICATION_TEXT)
            return Response(status_code=401)
        try:
            method, params = parse_call(await read_bounded(request, DEFAULT_MAX_BYTES))
        except BodyTooLarge:
            return Response("Request Entity Too Large", status_code=413)
        except XmlRpcError as exc:
            return _fault(FAULT_PARSE, f"parse error: {exc.reason}")
        prefix = f"ucp.{pbx.namespace}.requests."
        name = method.removeprefix(prefix) if method.startswith(prefix) else ""
        handler = _UCI_METHODS.get(name)
        if handler is None:
            return _fault(FAULT_NO_SUCH_METHOD, f"no such method: {method}")
        try:
            answer = handler(pbx, user, params, query)
            session = pbx.session(user.login)
            if session is not None and _callback_from(query) is not None:
                session.callback_requests += 1
            return Response(wire_response(answer, ctx.wire.types), media_type=XML)
        except NotLoggedIn:
            return _fault(sp.FAULT_NOT_LOGGED_IN, sp.FAULT_NOT_LOGGED_IN_TEXT)
        except InvalidInput as exc:
            return _fault(FAULT_INVALID_PARAMS, f"invalid parameters: {exc}")

    return Route(sp.UCI_PATH, xml_rpc, methods=["POST"])


def _one(params: list[Any], kind: type) -> Any:
    if len(params) != 1 or not isinstance(params[0], kind):
        raise InvalidInput("params", f"expected one {kind.__name__}")
    return params[0]


def _none(params: list[Any]) -> None:
    if params:
        raise InvalidInput("params", "expected none")


def _login(pbx: Pbx, user: User, params: list[Any], query: Mapping[str, str]) -> Any:
    _none(params)
    pbx.uci_login(user, _callback_from(query))
    return True


def _keep_alive(pbx: Pbx, user: User, params: list[Any], _: Mapping[str, str]) -> Any:
    _none(params)
    pbx.require_session(user)
    return True


def _logout(pbx: Pbx, user: User, params: list[Any], _: Mapping[str, str]) -> Any:
    _none(params)
    pbx.uci_logout(user)
    return True


def _subscribe(pbx: Pbx, user: User, params: list[Any], _: Mapping[str, str]) -> Any:
    service = _one(params, str)
    session = pbx.require_session(user)
    # [INF] Unknown event services answer false, as the boolean return type suggests.
    if service != sp.call_event_service(pbx.namespace):
        return False
    session.subscriptions.add(service)
    return True


def _unsubscribe(pbx: Pbx, user: User, params: list[Any], _: Mapping[str, str]) -> Any:
    service = _one(params, str)
    session = pbx.require_session(user)
    if service not in session.subscriptions:
        return False
    session.subscriptions.discard(service)
    return True


def _provided_events(pbx: Pbx, user: User, params: list[Any], _: Mapping[str, str]) -> Any:
    _none(params)
    pbx.require_session(user)
    return [sp.call_event_service(pbx.namespace)]


def _set_dnd(pbx: Pbx, user: User, params: list[Any], _: Mapping[str, str]) -> Any:
    enabled = _one(params, bool)
    session = pbx.require_session(user)
    pbx.set_dnd(user.login, enabled, "uci", session.id)
    return True


def _set_text(pbx: Pbx, user: User, params: list[Any], _: Mapping[str, str]) -> Any:
    text = _one(params, str)
    session = pbx.require_session(user)
    pbx.set_status_text(user.login, text, "uci", session.id)
    return True


def _get_state(pbx: Pbx, user: User, params: list[Any], _: Mapping[str, str]) -> Any:
    _none(params)
    pbx.require_session(user)
    return pbx.user_state(user.login)


def _call_ids(pbx: Pbx, user: User, params: list[Any], _: Mapping[str, str]) -> Any:
    _none(params)
    pbx.require_session(user)
    return [c.id for c in pbx.active_calls(user.login)]


def _call_state(pbx: Pbx, user: User, params: list[Any], _: Mapping[str, str]) -> Any:
    call_id = _one(params, str)
    pbx.require_session(user)
    for call in pbx.active_calls(user.login):
        if call.id == call_id:
            return pbx.call_struct(call, full=True, state=call.state)
    raise InvalidInput("callId", "no such call of this user")


_UCI_METHODS: dict[str, Callable[[Pbx, User, list[Any], Mapping[str, str]], Any]] = {
    "call.getCallIds": _call_ids,
    "call.getCallState": _call_state,
    "connection.login": _login,
    "connection.keepAlive": _keep_alive,
    "connection.logout": _logout,
    "service.subscribeEvents": _subscribe,
    "service.unsubscribeEvents": _unsubscribe,
    "service.getProvidedEvents": _provided_events,
    "userState.setDoNotDisturbSetting": _set_dnd,
    "userState.setChatPresenceMessage": _set_text,
    "userState.getUserState": _get_state,
}


def build_pbx_app(ctx: Context) -> ASGIApp:
    routes = [*_rest_routes(ctx), _oauth_route(ctx), _uci_route(ctx), *control_routes(ctx)]
    return FaultMiddleware(Starlette(routes=routes), ctx.faults)


def build_control_app(ctx: Context) -> ASGIApp:
    return Starlette(routes=control_routes(ctx))
