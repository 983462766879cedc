"""The link between a bridged user's two identities: Entra user id and STARFACE login ID.

Presence notifications name the Entra id, STARFACE call events name the login; the reconciler
works per Entra id.  The link is rebuilt whenever users are resolved by e-mail.
"""

from __future__ import annotations

from collections.abc import Mapping

import redis.asyncio as aioredis

from service.core import keys
from service.core.storage import decoded
from service.starface.directory import DirectoryStore


class IdentityStore:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def replace(self, login_by_user: Mapping[str, str]) -> None:
        """Make exactly these links current, in one transaction so no reader sees half of them."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.IDENTITY_LOGIN_BY_USER, keys.IDENTITY_USER_BY_LOGIN)
            if login_by_user:
                forward: dict[str | bytes, str | bytes] = dict(login_by_user.items())
                backward: dict[str | bytes, str | bytes] = {v: k for k, v in login_by_user.items()}
                pipe.hset(keys.IDENTITY_LOGIN_BY_USER, mapping=forward)  # type: ignore[arg-type]
                pipe.hset(keys.IDENTITY_USER_BY_LOGIN, mapping=backward)  # type: ignore[arg-type]
            await pipe.execute()

    async def login_for(self, user_id: str) -> str | None:
        raw = await self.redis.hget(keys.IDENTITY_LOGIN_BY_USER, user_id)
        return None if raw is None else decoded(raw)

    async def user_for(self, login: str) -> str | None:
        raw = await self.redis.hget(keys.IDENTITY_USER_BY_LOGIN, login)
        return None if raw is None else decoded(raw)

    async def all(self) -> dict[str, str]:
        """Entra user id -> login ID."""
        raw = await self.redis.hgetall(keys.IDENTITY_LOGIN_BY_USER)
        return {decoded(k): decoded(v) for k, v in raw.items()}


async def link_resolved(redis: aioredis.Redis, ids_by_email: Mapping[str, str]) -> list[str]:
    """Link each selected STARFACE user to the Entra id resolved for their e-mail.

    Returns the Entra ids whose link is new or changed: those users need a reconcile.
    """
    users = await DirectoryStore(redis).users()
    links = {ids_by_email[u.email_key]: u.login for u in users if u.email_key in ids_by_email}
    store = IdentityStore(redis)
    before = await store.all()
    if links != before:
        await store.replace(links)
    return sorted(user_id for user_id, login in links.items() if before.get(user_id) != login)
