"""The STARFACE sandbox control API (``/control``, docs/sandbox-starface.md): users, calls, faults."""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.sandbox.starface_callbacks import Delivery
from service.sandbox.starface_context import Context, error_response
from service.sandbox.starface_model import (
    CallDirection,
    CallEvent,
    CallTransitionError,
    Conflict,
    InvalidInput,
    NotFound,
    Pbx,
    User,
)
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


def control_routes(ctx: Context) -> list[Route]:
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
