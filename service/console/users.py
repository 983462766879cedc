"""One row per bridged user for the console's users page, read from Redis in a few pipelines.

Search narrows by the directory alone (login, name, e-mail), which is parsed once per directory
version.  A state filter reads the one field it needs for each user (pipelined, a thousand per
round trip), and whole rows are read only for the 50 users of the page shown.
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
from service.starface.sessions import FAILED, SessionStatus

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
        return bool(self.error) or self.uci == FAILED


@dataclass(frozen=True)
class UserPage:
    rows: list[UserRow]
    total: int
    page: int
    pages: int


def _matches(user: StarfaceUser, query: str) -> bool:
    folded = query.casefold()
    return any(folded in value.casefold() for value in (user.login, user.display_name, user.email or ""))


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
        together = zip(chunk, user_ids, credentials, sessions, strict=True)
        for user, user_id, credential, raw_session in together:
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


async def _per_user(
    redis: aioredis.Redis, users: list[StarfaceUser], ids: dict[str, str], command: str, *args: str
) -> list[Any]:
    """One command per linked user (``None`` for the unlinked), pipelined a thousand at a time."""
    answers: list[Any] = []
    for start in range(0, len(users), _CHUNK):
        chunk = users[start : start + _CHUNK]
        async with redis.pipeline(transaction=False) as pipe:
            for user in chunk:
                user_id = ids.get(user.login)
                if user_id is not None:
                    key = keys.user_calls(user_id) if command == "hlen" else keys.user_bridge(user_id)
                    getattr(pipe, command)(key, *args)
            found = iter(await pipe.execute())
        answers.extend(next(found) if user.login in ids else None for user in chunk)
    return answers


async def _narrow(redis: aioredis.Redis, users: list[StarfaceUser], wanted: str) -> list[StarfaceUser]:
    """The users a state filter keeps, reading only the one field it needs per user."""
    if wanted not in FILTERS or wanted == "all":
        return users
    if wanted == "no-credentials":
        stored = {decoded(k) for k in await redis.hkeys(keys.STARFACE_CREDENTIALS)}
        return [u for u in users if u.login not in stored]
    ids = {decoded(k): decoded(v) for k, v in (await redis.hgetall(keys.IDENTITY_USER_BY_LOGIN)).items()}
    if wanted == "unlinked":
        return [u for u in users if u.login not in ids]
    if wanted == "dnd-on":
        flags = await _per_user(redis, users, ids, "hget", "applied_dnd")
        return [u for u, flag in zip(users, flags, strict=True) if flag is not None and decoded(flag) == "1"]
    if wanted == "in-call":
        counts = await _per_user(redis, users, ids, "hlen")
        return [u for u, count in zip(users, counts, strict=True) if count]
    if wanted == "failing":
        errors = await _per_user(redis, users, ids, "hget", "last_error")
        sessions = {
            decoded(k): SessionStatus.from_json(v)
            for k, v in (await redis.hgetall(keys.UCI_SESSIONS)).items()
        }
        return [
            u
            for u, error in zip(users, errors, strict=True)
            if error or ((found := sessions.get(u.login)) is not None and found.error is not None)
        ]
    return users


class UserTable:
    """The users page's source; the parsed, sorted directory is cached per directory version."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._directory: list[StarfaceUser] = []
        self._stamp: tuple[Any, int] | None = None

    async def directory(self) -> list[StarfaceUser]:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(keys.STARFACE_DIRECTORY_META, "digest")
            pipe.hlen(keys.STARFACE_DIRECTORY)
            digest, size = await pipe.execute()
        stamp = (digest, int(size))
        if stamp != self._stamp or digest is None:
            raw = await self.redis.hvals(keys.STARFACE_DIRECTORY)
            users = [StarfaceUser.from_json(value) for value in raw]
            self._directory = sorted(users, key=lambda u: (u.display_name.casefold(), u.login))
            self._stamp = stamp
        return self._directory

    async def page(
        self, *, query: str = "", wanted: str = "all", page: int = 1, size: int = PAGE_SIZE
    ) -> UserPage:
        users = await self.directory()
        if query:
            users = [u for u in users if _matches(u, query)]
        users = await _narrow(self.redis, users, wanted)
        pages = max(1, -(-len(users) // size))
        page = min(max(1, page), pages)
        # Whole rows only for the page shown.
        shown = await _rows(self.redis, users[(page - 1) * size : page * size])
        return UserPage(shown, len(users), page, pages)

    async def rows_for(self, logins: Iterable[str]) -> list[UserRow]:
        wanted = set(logins)
        return await _rows(self.redis, [u for u in await self.directory() if u.login in wanted])
