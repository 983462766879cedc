"""The unguessable path tokens that route a UCI callback to the user whose session asked for it.

Redis keeps only each token's SHA-256, mapped to the STARFACE login; the token itself lives in the
callback URL the PBX was given at login.
"""

from __future__ import annotations

import hashlib
import re

import redis.asyncio as aioredis

from service.core import keys

PATH_PREFIX = "/starface/uci/"

# Our tokens are ``secrets.token_urlsafe(32)``; anything else is answered without asking Redis.
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{20,128}")


def token_digest(token: str) -> str:
    """What Redis stores for a callback token: never the token itself."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def callback_path(token: str) -> str:
    return f"{PATH_PREFIX}{token}"


async def register_token(redis: aioredis.Redis, token: str, login: str) -> None:
    """Make ``token`` route callbacks to ``login`` (idempotent)."""
    await redis.hset(keys.UCI_CALLBACK_TOKENS, token_digest(token), login)


async def login_for_token(redis: aioredis.Redis, token: str) -> str | None:
    """The login whose UCI session owns ``token``; ``None`` for an unknown or ill-formed token.

    The lookup is by SHA-256, so a timing difference can only tell an attacker about a hash they
    cannot steer, not about a prefix of a real token.
    """
    if not _TOKEN_SHAPE.fullmatch(token):
        return None
    login = await redis.hget(keys.UCI_CALLBACK_TOKENS, token_digest(token))
    if login is None:
        return None
    return login.decode() if isinstance(login, bytes) else str(login)
