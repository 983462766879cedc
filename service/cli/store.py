"""How a command reaches the bridge's Redis: ``REDIS_URL``, else the embedded Valkey in ``DATA_DIR``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from service.cli.policy import CommandFailed
from service.core.embedded import EmbeddedValkeyError, redis_url_for

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from service.core.settings import Settings


def load_settings(require: Sequence[str] = ()) -> Settings:
    """The settings a command needs, every problem named (``SettingsError``).

    pydantic is imported here, not at the top: it costs a fifth of a second that ``--help`` and
    the ``health`` probe need not pay."""
    from service.core.settings import Settings

    return Settings.from_env(require=require)


def valkey_dir(settings: Settings) -> Path:
    return Path(settings.data_dir) / "valkey"


def with_redis(settings: Settings, job: Callable[[aioredis.Redis], Awaitable[int]]) -> int:
    """Run ``job`` with a Redis client on the configured or embedded server."""

    # Imported when a command talks to Redis, not when the parser is built (--help stays fast).
    from redis.exceptions import RedisError

    from service.core import storage

    async def run(url: str) -> int:
        client = storage.connect(url, socket_timeout=10, socket_connect_timeout=5)
        try:
            return await job(client)
        finally:
            await client.aclose()

    try:
        with redis_url_for(settings.redis_url, valkey_dir(settings)) as url:
            return asyncio.run(run(url))
    except EmbeddedValkeyError as exc:
        raise CommandFailed(f"cannot start the embedded Valkey: {exc}") from None
    except (RedisError, OSError) as exc:
        # The URL may carry a password: name the error type only.
        raise CommandFailed(f"Redis is unreachable ({type(exc).__name__}); check REDIS_URL") from None
