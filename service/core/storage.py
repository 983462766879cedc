"""Redis connections with the timeouts each role needs."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError


def connect_web(url: str) -> aioredis.Redis:
    """For the public endpoint: a dead Redis must turn into a fast 503, never a slow answer.

    One immediate retry on a connection error replaces a pooled connection that died with a
    restarted server; against a server that is really down the reconnect is refused at once.
    """
    # A blocking pool: under a burst a request waits up to a second for a free connection
    # instead of failing with MaxConnectionsError (a 503) while Redis is healthy.
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        socket_timeout=1.0,
        socket_connect_timeout=0.5,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        max_connections=200,
        timeout=1.0,
    )
    return aioredis.Redis.from_pool(pool)  # the client owns the pool and closes it


def connect_worker(url: str, *, block_ms: int = 1000, max_connections: int = 512) -> aioredis.Redis:
    """For workers and the scheduler: patient retries; the socket timeout stays above XREADGROUP's block.

    One worker process shares this client between its reconcile pool, the UCI sessions and the
    blocking stream reads.  The pool waits for a free connection instead of failing when all are
    busy: a burst must slow the worker down, never crash it.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=30,
        socket_timeout=max(5.0, block_ms / 1000 + 5.0),
        socket_connect_timeout=2.0,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), 3),
        health_check_interval=30,
    )
    return aioredis.Redis(connection_pool=pool)


def decoded(value: Any) -> str:
    """A Redis reply value as text: the clients here return bytes, but a str passes through."""
    return value.decode() if isinstance(value, bytes) else str(value)
