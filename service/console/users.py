"""One row per bridged user for the console's users page, read from Redis in a few pipelines.

Search narrows by the directory alone (login, name, e-mail); the state filters need each user's
state, which is read for the matching users in one pipelined round trip per thousand users, so
10,000 users cost ten round trips, not forty thousand.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import redis.asyncio as aioredis

from service.bridge.decisions import DecisionRecord
from service.core import keys
from service.core.storage import decoded
from service.starface.rest import StarfaceUser
from service.starface.sessions import SessionStatus

FILTERS: Final = ("all", "failing", "no-credentials", "dnd-on", "in-call", "unlinked")
PAGE_SIZE: Final = 50
_CHUNK: Final = 1000


@dataclass(frozen=True)
class UserRow:
    login: str
    name: str
    email: str
    user_id: str | None
    availability: str | None
    activity: str | None
    dnd: bool | None
    text: str | None
    calls: int
    session: str | None
    has_credentials: bool
    uci: str | None
    error: str | None
    last_rule: str | None
    last_at: float | None

    @property
    def failing(self) -> bool:
        return bool(self.error) or self.uci == "failed"

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "failing": self.failing}


@dataclass(frozen=True)
class UserPage:
    rows: list[UserRow]
    total: int
    page: int
    pages: int


def _matches(user: StarfaceUser, query: str) -> bool:
    folded = query.casefold()
    return any(folded in value.casefold() for value in (user.login, user.display_name, user.email or ""))


async def _directory(redis: aioredis.Redis) -> list[StarfaceUser]:
    raw = await redis.hvals(keys.STARFACE_DIRECTORY)
    users = [StarfaceUser.from_json(value) for value in raw]
    return sorted(users, key=lambda u: (u.display_name.casefold(), u.login))


async def _rows(redis: aioredis.Redis, users: list[StarfaceUser]) -> list[UserRow]:
    rows: list[UserRow] = []
    for start in range(0, len(users), _CHUNK):
        chunk = users[start : start + _CHUNK]
        async with redis.pipeline(transaction=False) as pipe:
            pipe.hmget(keys.IDENTITY_USER_BY_LOGIN, [u.login for u in chunk])
            pipe.hmget(keys.STARFACE_CREDENTIALS, [u.login for u in chunk])
            pipe.hmget(keys.UCI_SESSIONS, [u.login for u in chunk])
            ids, credentials, sessions = await pipe.execute()
        user_ids = [decoded(i) if i is not None else None for i in ids]
        async with redis.pipeline(transaction=False) as pipe:
            for user_id in user_ids:
                if user_id is None:
                    continue
                pipe.hmget(keys.observed_presence(user_id), ["availability", "activity"])
                pipe.hgetall(keys.user_bridge(user_id))
                pipe.hlen(keys.user_calls(user_id))
                pipe.lindex(keys.user_decisions(user_id), 0)
            state = iter(await pipe.execute())
        for user, user_id, credential, raw_session in zip(
            chunk, user_ids, credentials, sessions, strict=True
        ):
            session = SessionStatus.from_json(raw_session) if raw_session is not None else None
            observed: list[Any] = [None, None]
            bridge: dict[str, str] = {}
            calls = 0
            last: DecisionRecord | None = None
            if user_id is not None:
                observed = next(state)
                bridge = {decoded(k): decoded(v) for k, v in next(state).items()}
                calls = int(next(state))
                raw_last = next(state)
                last = DecisionRecord.from_json(raw_last) if raw_last is not None else None
            dnd = bridge.get("applied_dnd")
            error = bridge.get("last_error")
            if session is not None and session.error is not None:
                error = error or session.describe()
            rows.append(
                UserRow(
                    login=user.login,
                    name=user.display_name,
                    email=user.email or "",
                    user_id=user_id,
                    availability=decoded(observed[0]) if observed[0] is not None else None,
                    activity=decoded(observed[1]) if observed[1] is not None else None,
                    dnd=None if dnd is None else dnd == "1",
                    text=bridge.get("applied_text"),
                    calls=calls,
                    session=bridge.get("session") if not bridge.get("session_cleared_at") else None,
                    has_credentials=credential is not None,
                    uci=session.state if session is not None else None,
                    error=error,
                    last_rule=last.rule if last else None,
                    last_at=last.at if last else None,
                )
            )
    return rows


def _keep(row: UserRow, wanted: str) -> bool:
    if wanted == "failing":
        return row.failing
    if wanted == "no-credentials":
        return not row.has_credentials
    if wanted == "dnd-on":
        return row.dnd is True
    if wanted == "in-call":
        return row.calls > 0
    if wanted == "unlinked":
        return row.user_id is None
    return True


async def user_page(
    redis: aioredis.Redis, *, query: str = "", wanted: str = "all", page: int = 1, size: int = PAGE_SIZE
) -> UserPage:
    users = await _directory(redis)
    if query:
        users = [u for u in users if _matches(u, query)]
    if wanted == "all":
        # Only the shown page's state is read when nothing filters by state.
        total = len(users)
        pages = max(1, -(-total // size))
        page = min(max(1, page), pages)
        shown = await _rows(redis, users[(page - 1) * size : page * size])
        return UserPage(shown, total, page, pages)
    rows = [row for row in await _rows(redis, users) if _keep(row, wanted)]
    pages = max(1, -(-len(rows) // size))
    page = min(max(1, page), pages)
    return UserPage(rows[(page - 1) * size : page * size], len(rows), page, pages)


async def rows_for(redis: aioredis.Redis, logins: Iterable[str]) -> list[UserRow]:
    wanted = set(logins)
    return await _rows(redis, [u for u in await _directory(redis) if u.login in wanted])
