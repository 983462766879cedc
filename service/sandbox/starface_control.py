"""The STARFACE sandbox control API (``/control``, docs/sandbox-starface.md): users, calls, faults."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.sandbox.starface_callbacks import Delivery
from service.sandbox.starface_context import Context, error_response
from service.sandbox.starface_model import Pbx
from service.sandbox.starface_records import (
    CallDirection,
    CallEvent,
    CallTransitionError,
    Conflict,
    InvalidInput,
    NotFound,
    User,
)
from service.sandbox.starface_wire import WIRE_TYPES
from service.web.body import BodyTooLarge, read_bounded

MAX_CONTROL_BYTES = 1024 * 1024
DOWN_MODES = ("none", "refuse", "503")


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
            return error_response(401, "control token required")
        try:
            raw = await read_bounded(request, MAX_CONTROL_BYTES)
            parsed = json.loads(raw) if raw.strip() else {}
        except BodyTooLarge:
            return error_response(413, "body too large")
        except ValueError as exc:
            return error_response(400, f"body is not JSON: {exc}")
        try:
            result = await handler(request, _Body(parsed))
        except InvalidInput as exc:
            return error_response(400, str(exc))
        except NotFound as exc:
            return error_response(404, str(exc))
        except (Conflict, CallTransitionError) as exc:
            return error_response(409, str(exc))
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


class ControlApi:
    """``/control``: drive the PBX from tests and demos (bearer = the control token)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.pbx = ctx.pbx

    async def dispatch(self, events: list[CallEvent], wait: bool) -> list[dict[str, Any]]:
        futures = self.ctx.dispatcher.submit(events)
        if not wait or not futures:
            return []
        done: list[Delivery] = await asyncio.gather(*futures)
        return [d.view() for d in done]

    async def info(self, _: Request, __: _Body) -> Any:
        return {**self.ctx.info, "namespace": self.pbx.namespace, "sessionTimeout": self.pbx.session_timeout}

    async def state(self, _: Request, __: _Body) -> Any:
        return {
            "now": self.pbx.clock.now(),
            "faults": self.ctx.faults.view(),
            "users": [_user_view(self.pbx, u) for u in self.pbx.users()],
            "groups": [_group_view(self.pbx, g.id) for g in self.pbx.groups()],
            "calls": [c.view() for c in self.pbx.calls()],
            "sessionDrops": [d.view() for d in self.pbx.session_drops()],
        }

    async def add_user(self, _: Request, body: _Body) -> Any:
        login = body.text("login")
        user = self.pbx.add_user(
            login,
            body.text("password"),
            email=body.text("email", f"{login}@example.com"),
            first_name=body.text("firstName", ""),
            family_name=body.text("familyName", ""),
            number=body.text("number", login),
            oauth_allowed=body.flag("oauthAllowed", False),
        )
        return _user_view(self.pbx, user)

    async def list_users(self, _: Request, __: _Body) -> Any:
        return [_user_view(self.pbx, u) for u in self.pbx.users()]

    async def get_user(self, request: Request, _: _Body) -> Any:
        return _user_view(self.pbx, self.pbx.user(request.path_params["login"]))

    async def patch_user(self, request: Request, body: _Body) -> Any:
        unknown = set(body.data) - set(_USER_FIELDS)
        if unknown:
            raise InvalidInput(sorted(unknown)[0], "cannot be changed")
        changes = {_USER_FIELDS[k]: v for k, v in body.data.items()}
        return _user_view(self.pbx, self.pbx.update_user(request.path_params["login"], changes))

    async def delete_user(self, request: Request, _: _Body) -> Any:
        self.pbx.remove_user(request.path_params["login"])

    async def set_dnd(self, request: Request, body: _Body) -> Any:
        login = request.path_params["login"]
        self.pbx.set_dnd(login, body.flag("enabled", False), "phone", None)
        return _user_view(self.pbx, self.pbx.user(login))

    async def set_text(self, request: Request, body: _Body) -> Any:
        login = request.path_params["login"]
        self.pbx.set_status_text(login, body.text("text"), "phone", None)
        return _user_view(self.pbx, self.pbx.user(login))

    async def start_ucc(self, request: Request, body: _Body) -> Any:
        login = request.path_params["login"]
        self.pbx.user(login)
        every = body.number("everySeconds", 30.0)
        if every <= 0:
            raise InvalidInput("everySeconds", "must be positive")
        text = body.text("text")
        await _stop_ucc(self.ctx, login)
        task = asyncio.create_task(_ucc_client(self.pbx, login, text, every), name=f"ucc-client-{login}")
        self.ctx.ucc_clients[login] = task
        task.add_done_callback(lambda done: _forget_ucc(self.ctx, login, done))
        return {"login": login, "everySeconds": every, "text": text}

    async def stop_ucc(self, request: Request, _: _Body) -> Any:
        login = request.path_params["login"]
        if not await _stop_ucc(self.ctx, login):
            raise NotFound("UCC client", login)

    async def get_modes(self, _: Request, __: _Body) -> Any:
        return {"wireTypes": self.ctx.wire.types}

    async def put_modes(self, _: Request, body: _Body) -> Any:
        types = body.text("wireTypes", self.ctx.wire.types)
        if types not in WIRE_TYPES:
            raise InvalidInput("wireTypes", f"must be one of {', '.join(WIRE_TYPES)}")
        self.ctx.wire.types = types
        return {"wireTypes": types}

    async def history(self, request: Request, _: _Body) -> Any:
        login = request.path_params["login"]
        return {
            "dnd": [e.view() for e in self.pbx.dnd_history(login)],
            "statusText": [e.view() for e in self.pbx.text_history(login)],
        }

    async def get_session(self, request: Request, _: _Body) -> Any:
        login = request.path_params["login"]
        self.pbx.user(login)
        session = self.pbx.session(login)
        if session is None:
            raise NotFound("session of user", login)
        return session.view()

    async def drop_session(self, request: Request, _: _Body) -> Any:
        if not self.pbx.drop_session(request.path_params["login"]):
            raise NotFound("session of user", request.path_params["login"])

    async def add_group(self, _: Request, body: _Body) -> Any:
        group = self.pbx.add_group(
            body.text("name"),
            body.logins("members"),
            internal_number=body.text("internalNumber", ""),
            external_number=body.text("externalNumber", ""),
        )
        return _group_view(self.pbx, group.id)

    async def list_groups(self, _: Request, __: _Body) -> Any:
        return [_group_view(self.pbx, g.id) for g in self.pbx.groups()]

    async def set_members(self, request: Request, body: _Body) -> Any:
        group = self.pbx.set_group_members(request.path_params["groupId"], body.logins("members"))
        return _group_view(self.pbx, group.id)

    async def delete_group(self, request: Request, _: _Body) -> Any:
        self.pbx.remove_group(request.path_params["groupId"])

    async def place_call(self, _: Request, body: _Body) -> Any:
        direction = body.text("direction", "incoming")
        if direction not in ("incoming", "outgoing"):
            raise InvalidInput("direction", "must be incoming or outgoing")
        typed: CallDirection = "incoming" if direction == "incoming" else "outgoing"
        call, events = self.pbx.place_call(
            body.text("login"),
            direction=typed,
            remote_number=body.text("remoteNumber", "+4971112345678"),
            remote_name=body.text("remoteName", "Erika Mustermann"),
            group_id=body.text("groupId", ""),
            sparse_first=body.flag("sparseFirst", typed == "incoming"),
            empty_first_state=body.flag("emptyFirstState", False),
        )
        return {**call.view(), "deliveries": await self.dispatch(events, body.flag("wait", True))}

    async def answer(self, request: Request, body: _Body) -> Any:
        call, events = self.pbx.answer_call(request.path_params["callId"])
        return {**call.view(), "deliveries": await self.dispatch(events, body.flag("wait", True))}

    async def hangup(self, request: Request, body: _Body) -> Any:
        call, events = self.pbx.hangup_call(request.path_params["callId"])
        return {**call.view(), "deliveries": await self.dispatch(events, body.flag("wait", True))}

    async def list_calls(self, _: Request, __: _Body) -> Any:
        return {
            "active": [c.view() for c in self.pbx.calls()],
            "ended": [c.view() for c in self.pbx.ended_calls()],
        }

    async def deliveries(self, request: Request, _: _Body) -> Any:
        login = request.query_params.get("login")
        since = request.query_params.get("since", "0")
        after = int(since) if since.isdigit() else 0
        return [
            d.view()
            for d in self.ctx.dispatcher.deliveries
            if d.seq > after and (login is None or d.login == login)
        ]

    async def get_faults(self, _: Request, __: _Body) -> Any:
        return self.ctx.faults.view()

    async def put_faults(self, _: Request, body: _Body) -> Any:
        down = body.text("down", self.ctx.faults.down)
        if down not in DOWN_MODES:
            raise InvalidInput("down", f"must be one of {', '.join(DOWN_MODES)}")
        errors = body.number("errors", self.ctx.faults.errors)
        self.ctx.faults.slow_seconds = body.number("slowSeconds", self.ctx.faults.slow_seconds)
        self.ctx.faults.errors = int(errors)
        paths = body.data.get("failPaths", list(self.ctx.faults.fail_paths))
        if not isinstance(paths, list) or not all(isinstance(p, str) and p.startswith("/") for p in paths):
            raise InvalidInput("failPaths", 'must be a list of absolute paths, e.g. ["/rest/groups"]')
        self.ctx.faults.fail_paths = tuple(paths)
        refused = body.text("refusedLogin", self.ctx.faults.refused_login)
        if refused not in ("401", "fault"):
            raise InvalidInput("refusedLogin", "must be 401 or fault")
        self.ctx.faults.refused_login = refused
        await _apply_down(self.ctx, down)
        return self.ctx.faults.view()

    async def clear_faults(self, _: Request, __: _Body) -> Any:
        self.ctx.faults.slow_seconds = 0.0
        self.ctx.faults.errors = 0
        self.ctx.faults.fail_paths = ()
        self.ctx.faults.refused_login = "401"
        await _apply_down(self.ctx, "none")
        return self.ctx.faults.view()

    async def restart(self, _: Request, __: _Body) -> Any:
        self.pbx.restart()
        return {"sessionDrops": [d.view() for d in self.pbx.session_drops()]}

    async def get_clock(self, _: Request, __: _Body) -> Any:
        return {"now": self.pbx.clock.now(), "offset": self.pbx.clock.offset}

    async def advance(self, _: Request, body: _Body) -> Any:
        now = self.pbx.clock.advance(body.number("seconds", 0.0))
        return {"now": now, "offset": self.pbx.clock.offset}


def control_routes(ctx: Context) -> list[Route]:
    api = ControlApi(ctx)

    def route(path: str, handler: Handler, method: str, status: int = 200) -> Route:
        return Route(path, _control(ctx, handler, status), methods=[method])

    user = "/control/users/{login}"
    return [
        route("/control", api.info, "GET"),
        route("/control/state", api.state, "GET"),
        route("/control/users", api.add_user, "POST", 201),
        route("/control/users", api.list_users, "GET"),
        route(user, api.get_user, "GET"),
        route(user, api.patch_user, "PATCH"),
        route(user, api.delete_user, "DELETE"),
        route(f"{user}/dnd", api.set_dnd, "PUT"),
        route(f"{user}/status-text", api.set_text, "PUT"),
        route(f"{user}/history", api.history, "GET"),
        route(f"{user}/ucc-client", api.start_ucc, "PUT"),
        route(f"{user}/ucc-client", api.stop_ucc, "DELETE"),
        route("/control/modes", api.get_modes, "GET"),
        route("/control/modes", api.put_modes, "PUT"),
        route(f"{user}/session", api.get_session, "GET"),
        route(f"{user}/session", api.drop_session, "DELETE"),
        route("/control/groups", api.add_group, "POST", 201),
        route("/control/groups", api.list_groups, "GET"),
        route("/control/groups/{groupId:int}/members", api.set_members, "PUT"),
        route("/control/groups/{groupId:int}", api.delete_group, "DELETE"),
        route("/control/calls", api.place_call, "POST", 201),
        route("/control/calls", api.list_calls, "GET"),
        route("/control/calls/{callId}/answer", api.answer, "POST"),
        route("/control/calls/{callId}/hangup", api.hangup, "POST"),
        route("/control/deliveries", api.deliveries, "GET"),
        route("/control/faults", api.get_faults, "GET"),
        route("/control/faults", api.put_faults, "PUT"),
        route("/control/faults", api.clear_faults, "DELETE"),
        route("/control/restart", api.restart, "POST"),
        route("/control/clock", api.get_clock, "GET"),
        route("/control/clock/advance", api.advance, "POST"),
    ]


async def _apply_down(ctx: Context, mode: str) -> None:
    previous = ctx.faults.down
    ctx.faults.down = mode
    if ctx.set_listening is not None and (previous == "refuse") != (mode == "refuse"):
        await ctx.set_listening(mode != "refuse")


async def _ucc_client(pbx: Pbx, login: str, text: str, every: float) -> None:
    """The user's desktop UCC client: it writes its own presence text now and every ``every``
    seconds of sandbox time, whatever anyone else set meanwhile; it ends with the user."""
    while True:
        try:
            pbx.set_status_text(login, text, "ucc", None)
        except NotFound:
            return
        await pbx.clock.sleep(every)


def _forget_ucc(ctx: Context, login: str, task: asyncio.Task[None]) -> None:
    if ctx.ucc_clients.get(login) is task:
        del ctx.ucc_clients[login]


async def _stop_ucc(ctx: Context, login: str) -> bool:
    task = ctx.ucc_clients.pop(login, None)
    if task is None:
        return False
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return True


async def stop_ucc_clients(ctx: Context) -> None:
    for login in list(ctx.ucc_clients):
        await _stop_ucc(ctx, login)
