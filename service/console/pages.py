"""The read pages: overview (what ``status`` shows), users, one user (``explain``), audit log."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response

from service.bridge.decisions import DecisionLog
from service.bridge.userstate import UserStateStore
from service.console.context import console_of
from service.console.users import FILTERS
from service.ops import status
from service.ops.explain import read_back_view


async def overview(request: Request) -> Response:
    console = console_of(request)
    report = await status.collect(console.redis, console.settings)
    return console.render(request, "overview.html", report=report)


def _page_query(request: Request) -> tuple[str, str, int]:
    query = request.query_params.get("q", "")[:200]
    wanted = request.query_params.get("show", "all")
    if wanted not in FILTERS:
        wanted = "all"
    page_text = request.query_params.get("page", "1")
    page = int(page_text) if page_text.isdigit() and len(page_text) < 7 else 1
    return query, wanted, page


async def users(request: Request) -> Response:
    console = console_of(request)
    query, wanted, page = _page_query(request)
    result = await console.users.page(query=query, wanted=wanted, page=page)
    return console.render(request, "users.html", result=result, q=query, show=wanted, filters=FILTERS)


async def user_rows(request: Request) -> Response:
    """The table body alone: what the page's script fetches every second."""
    console = console_of(request)
    query, wanted, page = _page_query(request)
    result = await console.users.page(query=query, wanted=wanted, page=page)
    return console.render(request, "user_rows.html", result=result)


async def user(request: Request) -> Response:
    console = console_of(request)
    login = request.path_params["login"]
    found = await console.users.rows_for([login])
    if not found:
        return console.render(request, "error.html", status=404, detail=f"no bridged STARFACE user {login!r}")
    row = found[0]
    decisions = await DecisionLog(console.redis).recent(row.user_id, 50) if row.user_id else []
    read_back = None
    if row.user_id:
        bridge = await UserStateStore(console.redis).bridge(row.user_id)
        read_back = await read_back_view(
            console.redis,
            row.user_id,
            bridge,
            time.time(),
            dnd_policy=console.settings.starface_dnd_policy,
            rewrites_per_hour=console.settings.starface_rewrites_per_hour,
        )
    return console.render(request, "user.html", row=row, decisions=decisions, read_back=read_back)


async def audit(request: Request) -> Response:
    console = console_of(request)
    return console.render(request, "audit.html", entries=await console.audit.recent(500))
