"""HTTP face of the STARFACE sandbox: REST, OAuth token endpoint, UCI ``/xml-rpc`` and ``/control``.

Two Starlette apps share one ``Context``: the PBX app (what a real PBX serves, plus ``/control``)
and the control app, served on its own listener so the control API stays reachable while a fault
makes the PBX refuse connections.  Fault injection wraps only the PBX routes.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from service.sandbox.starface_callbacks import Delivery, Dispatcher
from service.sandbox.starface_model import (
    AuthenticationFailed,
    Callback,
    CallDirection,
    CallEvent,
    CallTransitionError,
    Conflict,
    InvalidInput,
    NotFound,
    NotLoggedIn,
    OAuthError,
    Pbx,
    User,
)
from service.starface import protocol as sp
from service.starface.xmlrpc import DEFAULT_MAX_BYTES, XmlRpcError, dumps_fault, dumps_response, parse_call
from service.web.body import BodyTooLarge, read_bounded

MAX_JSON_BYTES = 16 * 1024
MAX_CONTROL_BYTES = 1024 * 1024
# [INF] Fault codes for what the contract leaves open; FAULT_NOT_LOGGED_IN is the shared constant.
FAULT_PARSE = -32700
FAULT_NO_SUCH_METHOD = -32601
FAULT_INVALID_PARAMS = -32602
DOWN_MODES = ("none", "refuse", "503")
SANDBOX_VERSION = "10.0.1.6"
XML = "text/xml; charset=utf-8"


@dataclass
class Faults:
    down: str = "none"
    slow_seconds: float = 0.0
    errors: int = 0

    def view(self) -> dict[str, Any]:
        return {"down": self.down, "slowSeconds": self.slow_seconds, "errors": self.errors}


@dataclass
class Context:
    pbx: Pbx
    dispatcher: Dispatcher
    control_token: str = field(repr=False)
    faults: Faults = field(default_factory=Faults)
    # Set by the server: closes or reopens the PBX listener for the "refuse" fault.
    set_listening: Callable[[bool], Awaitable[None]] | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


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
            return _error(400, f"missing or unsupported {sp.REST_VERSION_HEADER} header")
        try:
            user = _rest_user(ctx, request)
        except AuthenticationFailed:
            return _error(401, "not authenticated")
        try:
            return handler(request, user)
        except NotFound as exc:
            return _error(404, str(exc))

    return endpoint


def _rest_routes(ctx: Context) -> list[Route]:
    pbx = ctx.pbx

    async def login_template(request: Request) -> Response:
        if not _version_ok(request):
            return _error(400, f"missing or unsupported {sp.REST_VERSION_HEADER} header")
        return JSONResponse({"loginType": "Internal", "nonce": pbx.issue_nonce(), "secret": None})

    async def login(request: Request) -> Response:
        if not _version_ok(request):
            return _error(400, f"missing or unsupported {sp.REST_VERSION_HEADER} header")
        try:
            body = json.loads(await read_bounded(request, MAX_JSON_BYTES))
        except BodyTooLarge:
            return _error(413, "body too large")
        except ValueError:
            return _error(400, "body is not JSON")
        if not isinstance(body, dict) or not all(
            isinstance(body.get(k), str) for k in ("loginType", "nonce", "secret")
        ):
            return _error(400, "invalid login")
        try:
            token = pbx.rest_login(body["loginType"], body["nonce"], body["secret"])
        except AuthenticationFailed:
            return _error(400, "invalid login")
        return JSONResponse({"token": token})

    async def logout(request: Request) -> Response:
        if not _version_ok(request):
            return _error(400, f"missing or unsupported {sp.REST_VERSION_HEADER} header")
        token = request.headers.get(sp.REST_TOKEN_HEADER)
        if token:
            pbx.rest_logout(token)
        return Response(status_code=204)

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
        Route("/rest/login", login_template, methods=["GET"]),
        Route("/rest/login", login, methods=["POST"]),
        Route("/rest/login", logout, methods=["DELETE"]),
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
            return Response(dumps_response(handler(pbx, user, params, query)), media_type=XML)
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


_UCI_METHODS: dict[str, Callable[[Pbx, User, list[Any], Mapping[str, str]], Any]] = {
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


# -- control API -----------------------------------------------------------------------------------


class _Body:
    """Typed access to a control JSON object; a wrong type raises ``InvalidInput`` naming the key."""

    def __init__(self, data: Any) -> None:
        if not isinstance(data, dict):
            raise InvalidInput("body", "must be a JSON object")
        self.data: dict[str, Any] = data

    def text(self, key: str, default: str | None = None) -> str:
        value = self.data.get(key, default)
        if not isinstance(value, str):
            raise InvalidInput(key, "must be a string")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise InvalidInput(key, "must be true or false")
        return value

    def number(self, key: str, default: float) -> float:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise InvalidInput(key, "must be a non-negative number")
        return float(value)

    def logins(self, key: str) -> list[str]:
        value = self.data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidInput(key, "must be a list of login IDs")
        return list(value)


Handler = Callable[[Request, _Body], Awaitable[Any]]


def _control(ctx: Context, handler: Handler, status: int = 200) -> Callable[[Request], Awaitable[Response]]:
    expected = f"Bearer {ctx.control_token}".encode()

    async def endpoint(request: Request) -> Response:
        presented = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(presented, expected):
            return _error(401, "control token required")
        try:
            raw = await read_bounded(request, MAX_CONTROL_BYTES)
            parsed = json.loads(raw) if raw.strip() else {}
        except BodyTooLarge:
            return _error(413, "body too large")
        except ValueError as exc:
            return _error(400, f"body is not JSON: {exc}")
        try:
            result = await handler(request, _Body(parsed))
        except InvalidInput as exc:
            return _error(400, str(exc))
        except NotFound as exc:
            return _error(404, str(exc))
        except (Conflict, CallTransitionError) as exc:
            return _error(409, str(exc))
        if result is None:
            return Response(status_code=204)
        return JSONResponse(result, status_code=status)

    return endpoint


def _user_view(pbx: Pbx, user: User) -> dict[str, Any]:
    session = pbx.session(user.login)
    return {
        **user.rest_view(),
        "number": user.number,
        "oauthAllowed": user.oauth_allowed,
        "dnd": user.dnd,
        "statusText": user.status_text,
        "chatPresence": user.chat_presence,
        "telephonyState": pbx.telephony_state(user.login),
        "session": session.view() if session else None,
    }


def _group_view(pbx: Pbx, group_id: int) -> dict[str, Any]:
    group = pbx.group(group_id)
    return {
        "id": group.id,
        "groupId": group.group_id,
        "name": group.name,
        "internalNumber": group.internal_number,
        "externalNumber": group.external_number,
        "members": list(group.members),
    }


_USER_FIELDS = {
    "password": "password",
    "email": "email",
    "firstName": "first_name",
    "familyName": "family_name",
    "number": "number",
    "oauthAllowed": "oauth_allowed",
    "chatPresence": "chat_presence",
}


def _control_routes(ctx: Context) -> list[Route]:
    pbx = ctx.pbx

    async def dispatch(events: list[CallEvent], wait: bool) -> list[dict[str, Any]]:
        futures = ctx.dispatcher.submit(events)
        if not wait or not futures:
            return []
        done: list[Delivery] = await asyncio.gather(*futures)
        return [d.view() for d in done]

    async def info(_: Request, __: _Body) -> Any:
        return {**ctx.info, "namespace": pbx.namespace, "sessionTimeout": pbx.session_timeout}

    async def state(_: Request, __: _Body) -> Any:
        return {
            "now": pbx.clock.now(),
            "faults": ctx.faults.view(),
            "users": [_user_view(pbx, u) for u in pbx.users()],
            "groups": [_group_view(pbx, g.id) for g in pbx.groups()],
            "calls": [c.view() for c in pbx.calls()],
            "sessionDrops": [d.view() for d in pbx.session_drops()],
        }

    async def add_user(_: Request, body: _Body) -> Any:
        login = body.text("login")
        user = pbx.add_user(
            login,
            body.text("password"),
            email=body.text("email", f"{login}@example.com"),
            first_name=body.text("firstName", ""),
            family_name=body.text("familyName", ""),
            number=body.text("number", login),
            oauth_allowed=body.flag("oauthAllowed", False),
        )
        return _user_view(pbx, user)

    async def list_users(_: Request, __: _Body) -> Any:
        return [_user_view(pbx, u) for u in pbx.users()]

    async def get_user(request: Request, _: _Body) -> Any:
        return _user_view(pbx, pbx.user(request.path_params["login"]))

    async def patch_user(request: Request, body: _Body) -> Any:
        unknown = set(body.data) - set(_USER_FIELDS)
        if unknown:
            raise InvalidInput(sorted(unknown)[0], "cannot be changed")
        changes = {_USER_FIELDS[k]: v for k, v in body.data.items()}
        return _user_view(pbx, pbx.update_user(request.path_params["login"], changes))

    async def delete_user(request: Request, _: _Body) -> Any:
        pbx.remove_user(request.path_params["login"])

    async def set_dnd(request: Request, body: _Body) -> Any:
        login = request.path_params["login"]
        pbx.set_dnd(login, body.flag("enabled", False), "phone", None)
        return _user_view(pbx, pbx.user(login))

    async def set_text(request: Request, body: _Body) -> Any:
        login = request.path_params["login"]
        pbx.set_status_text(login, body.text("text"), "phone", None)
        return _user_view(pbx, pbx.user(login))

    async def history(request: Request, _: _Body) -> Any:
        login = request.path_params["login"]
        return {
            "dnd": [e.view() for e in pbx.dnd_history(login)],
            "statusText": [e.view() for e in pbx.text_history(login)],
        }

    async def get_session(request: Request, _: _Body) -> Any:
        login = request.path_params["login"]
        pbx.user(login)
        session = pbx.session(login)
        if session is None:
            raise NotFound("session of user", login)
        return session.view()

    async def drop_session(request: Request, _: _Body) -> Any:
        if not pbx.drop_session(request.path_params["login"]):
            raise NotFound("session of user", request.path_params["login"])

    async def add_group(_: Request, body: _Body) -> Any:
        group = pbx.add_group(
            body.text("name"),
            body.logins("members"),
            internal_number=body.text("internalNumber", ""),
            external_number=body.text("externalNumber", ""),
        )
        return _group_view(pbx, group.id)

    async def list_groups(_: Request, __: _Body) -> Any:
        return [_group_view(pbx, g.id) for g in pbx.groups()]

    async def set_members(request: Request, body: _Body) -> Any:
        group = pbx.set_group_members(request.path_params["groupId"], body.logins("members"))
        return _group_view(pbx, group.id)

    async def delete_group(request: Request, _: _Body) -> Any:
        pbx.remove_group(request.path_params["groupId"])

    async def place_call(_: Request, body: _Body) -> Any:
        direction = body.text("direction", "incoming")
        if direction not in ("incoming", "outgoing"):
            raise InvalidInput("direction", "must be incoming or outgoing")
        typed: CallDirection = "incoming" if direction == "incoming" else "outgoing"
        call, events = pbx.place_call(
            body.text("login"),
            direction=typed,
            remote_number=body.text("remoteNumber", "+4971112345678"),
            remote_name=body.text("remoteName", "Erika Mustermann"),
            group_id=body.text("groupId", ""),
            sparse_first=body.flag("sparseFirst", typed == "incoming"),
            empty_first_state=body.flag("emptyFirstState", False),
        )
        return {**call.view(), "deliveries": await dispatch(events, body.flag("wait", True))}

    async def answer(request: Request, body: _Body) -> Any:
        call, events = pbx.answer_call(request.path_params["callId"])
        return {**call.view(), "deliveries": await dispatch(events, body.flag("wait", True))}

    async def hangup(request: Request, body: _Body) -> Any:
        call, events = pbx.hangup_call(request.path_params["callId"])
        return {**call.view(), "deliveries": await dispatch(events, body.flag("wait", True))}

    async def list_calls(_: Request, __: _Body) -> Any:
        return {"active": [c.view() for c in pbx.calls()], "ended": [c.view() for c in pbx.ended_calls()]}

    async def deliveries(request: Request, _: _Body) -> Any:
        login = request.query_params.get("login")
        since = request.query_params.get("since", "0")
        after = int(since) if since.isdigit() else 0
        return [
            d.view()
            for d in ctx.dispatcher.deliveries
            if d.seq > after and (login is None or d.login == login)
        ]

    async def get_faults(_: Request, __: _Body) -> Any:
        return ctx.faults.view()

    async def put_faults(_: Request, body: _Body) -> Any:
        down = body.text("down", ctx.faults.down)
        if down not in DOWN_MODES:
            raise InvalidInput("down", f"must be one of {', '.join(DOWN_MODES)}")
        errors = body.number("errors", ctx.faults.errors)
        ctx.faults.slow_seconds = body.number("slowSeconds", ctx.faults.slow_seconds)
        ctx.faults.errors = int(errors)
        await _apply_down(ctx, down)
        return ctx.faults.view()

    async def clear_faults(_: Request, __: _Body) -> Any:
        ctx.faults.slow_seconds = 0.0
        ctx.faults.errors = 0
        await _apply_down(ctx, "none")
        return ctx.faults.view()

    async def restart(_: Request, __: _Body) -> Any:
        pbx.restart()
        return {"sessionDrops": [d.view() for d in pbx.session_drops()]}

    async def get_clock(_: Request, __: _Body) -> Any:
        return {"now": pbx.clock.now(), "offset": pbx.clock.offset}

    async def advance(_: Request, body: _Body) -> Any:
        now = pbx.clock.advance(body.number("seconds", 0.0))
        return {"now": now, "offset": pbx.clock.offset}

    def route(path: str, handler: Handler, method: str, status: int = 200) -> Route:
        return Route(path, _control(ctx, handler, status), methods=[method])

    user = "/control/users/{login}"
    return [
        route("/control", info, "GET"),
        route("/control/state", state, "GET"),
        route("/control/users", add_user, "POST", 201),
        route("/control/users", list_users, "GET"),
        route(user, get_user, "GET"),
        route(user, patch_user, "PATCH"),
        route(user, delete_user, "DELETE"),
        route(f"{user}/dnd", set_dnd, "PUT"),
        route(f"{user}/status-text", set_text, "PUT"),
        route(f"{user}/history", history, "GET"),
        route(f"{user}/session", get_session, "GET"),
        route(f"{user}/session", drop_session, "DELETE"),
        route("/control/groups", add_group, "POST", 201),
        route("/control/groups", list_groups, "GET"),
        route("/control/groups/{groupId:int}/members", set_members, "PUT"),
        route("/control/groups/{groupId:int}", delete_group, "DELETE"),
        route("/control/calls", place_call, "POST", 201),
        route("/control/calls", list_calls, "GET"),
        route("/control/calls/{callId}/answer", answer, "POST"),
        route("/control/calls/{callId}/hangup", hangup, "POST"),
        route("/control/deliveries", deliveries, "GET"),
        route("/control/faults", get_faults, "GET"),
        route("/control/faults", put_faults, "PUT"),
        route("/control/faults", clear_faults, "DELETE"),
        route("/control/restart", restart, "POST"),
        route("/control/clock", get_clock, "GET"),
        route("/control/clock/advance", advance, "POST"),
    ]


async def _apply_down(ctx: Context, mode: str) -> None:
    previous = ctx.faults.down
    ctx.faults.down = mode
    if ctx.set_listening is not None and (previous == "refuse") != (mode == "refuse"):
        await ctx.set_listening(mode != "refuse")


def build_pbx_app(ctx: Context) -> ASGIApp:
    routes = [*_rest_routes(ctx), _oauth_route(ctx), _uci_route(ctx), *_control_routes(ctx)]
    return FaultMiddleware(Starlette(routes=routes), ctx.faults)


def build_control_app(ctx: Context) -> ASGIApp:
    return Starlette(routes=_control_routes(ctx))
