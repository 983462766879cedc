"""Console sessions: a random id in a signed ``HttpOnly`` cookie, the session itself in Redis.

The Redis key's TTL is the idle timeout and every request renews it, so a session ends by itself
after ``CONSOLE_IDLE_MINUTES`` of silence and a sign-out (or a flushed Redis) ends it everywhere.
Only a digest of the id is stored, so a Redis dump holds no usable cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from service.core import keys
from service.core.storage import decoded

COOKIE = "pb_console"
# Local break-glass sign-ins and Microsoft ones are told apart in the audit log.
MICROSOFT = "microsoft"
LOCAL = "local"


@dataclass(frozen=True)
class ConsoleSession:
    id: str
    who: str
    name: str
    method: str
    admin: bool
    csrf: str
    oid: str = ""


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class CookieSigner:
    """HMAC-SHA256 over the session id with a key derived from ``BRIDGE_SECRET_KEY``."""

    def __init__(self, secret: str) -> None:
        self._key = hmac.new(secret.encode(), b"presence-bridge console cookie", hashlib.sha256).digest()

    def sign(self, value: str) -> str:
        mac = hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()
        return f"{value}.{mac}"

    def unsign(self, signed: str) -> str | None:
        value, _, mac = signed.rpartition(".")
        if not value or len(signed) > 200:
            return None
        expected = hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()
        return value if hmac.compare_digest(expected, mac) else None


class SessionStore:
    def __init__(self, redis: aioredis.Redis, signer: CookieSigner, idle_seconds: int) -> None:
        self.redis = redis
        self.signer = signer
        self.idle_seconds = idle_seconds

    async def create(
        self, *, who: str, name: str, method: str, admin: bool, oid: str = ""
    ) -> tuple[str, ConsoleSession]:
        """A new session; returns the cookie value and the session."""
        session_id = secrets.token_urlsafe(32)
        session = ConsoleSession(session_id, who, name, method, admin, secrets.token_urlsafe(32), oid)
        key = keys.console_session(_digest(session_id))
        mapping = {
            "who": who,
            "name": name,
            "method": method,
            "admin": "1" if admin else "0",
            "csrf": session.csrf,
            "oid": oid,
            "created": repr(time.time()),
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=mapping)  # type: ignore[arg-type]
            pipe.expire(key, self.idle_seconds)
            await pipe.execute()
        return self.signer.sign(session_id), session

    async def load(self, cookie: str | None) -> ConsoleSession | None:
        """The live session of a cookie, renewing its idle timeout; ``None`` if none or forged."""
        session_id = self.signer.unsign(cookie) if cookie else None
        if session_id is None:
            return None
        key = keys.console_session(_digest(session_id))
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(key)
            pipe.expire(key, self.idle_seconds)
            raw, _ = await pipe.execute()
        if not raw:
            return None
        data = {decoded(k): decoded(v) for k, v in raw.items()}
        return ConsoleSession(
            id=session_id,
            who=data.get("who", ""),
            name=data.get("name", ""),
            method=data.get("method", ""),
            admin=data.get("admin") == "1",
            csrf=data.get("csrf", ""),
            oid=data.get("oid", ""),
        )

    async def end(self, session: ConsoleSession) -> None:
        await self.redis.delete(keys.console_session(_digest(session.id)))
