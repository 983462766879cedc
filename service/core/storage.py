"""Redis connections with the timeouts each role needs."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.commands.core import AsyncScript
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from service.core.settings import CLUSTER_SCHEMES


def is_cluster_url(url: str) -> bool:
    return urllib.parse.urlsplit(url).scheme in CLUSTER_SCHEMES


def connect_cluster(url: str, **options: Any) -> aioredis.Redis:
    """A Redis Cluster client for ``redis+cluster://[user:password@]host:port[,host:port...]``.

    Any reachable node is enough to find the others; several let a start succeed while one is
    down.  The client speaks the same commands as the single-server one for everything the
    bridge does (every script and transaction stays in one slot), so callers use one type.
    """
    parts = urllib.parse.urlsplit(url)
    hosts = parts.netloc.rsplit("@", 1)[-1].split(",")
    nodes = []
    for host in hosts:
        split = urllib.parse.urlsplit(f"//{host}")
        nodes.append(ClusterNode(split.hostname or "127.0.0.1", split.port or 6379))
    cluster = RedisCluster(
        startup_nodes=nodes,
        username=urllib.parse.unquote(parts.username) if parts.username else None,
        password=urllib.parse.unquote(parts.password) if parts.password else None,
        ssl=parts.scheme.startswith("rediss"),
        **options,
    )
    return cast(aioredis.Redis, cluster)


def connect(url: str, **options: Any) -> aioredis.Redis:
    """A client for one-off commands (CLI, tests): a cluster or a single server, by the URL."""
    if is_cluster_url(url):
        return connect_cluster(url, **options)
    return aioredis.Redis.from_url(url, **options)


def connect_web(url: str) -> aioredis.Redis:
    """For the public endpoint: a dead Redis must turn into a fast 503, never a slow answer.

    One immediate retry on a connection error replaces a pooled connection that died with a
    restarted server; against a server that is really down the reconnect is refused at once.
    """
    if is_cluster_url(url):
        return connect_cluster(
            url,
            socket_timeout=1.0,
            socket_connect_timeout=0.5,
            retry=Retry(NoBackoff(), 1),
            max_connections=200,
        )
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
    if is_cluster_url(url):
        # Per node; a failover (a replica promoted) is followed by the client's own retries.
        return connect_cluster(
            url,
            max_connections=max_connections,
            socket_timeout=max(5.0, block_ms / 1000 + 5.0),
            socket_connect_timeout=2.0,
            retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), 6),
            health_check_interval=30,
        )
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


ScriptCall = tuple[AsyncScript, list[str], list[Any]]

# Items per batched script call: one call holds the server for its whole loop, so a batch of a
# few hundred (well under a millisecond of Lua) keeps other clients' latency flat.
SCRIPT_BATCH = 256


def is_cluster_client(redis: aioredis.Redis) -> bool:
    """Whether ``redis`` is a cluster client: there a transaction is costly (redis-py resolves the
    slot of every command queued in a cluster transaction on a thread and event loop of its
    own), so hot paths use a script or a plain pipeline instead."""
    return isinstance(redis, RedisCluster)


def slot_groups(redis: aioredis.Redis, keys: list[str]) -> list[list[int]]:
    """The positions of ``keys`` grouped so that one script may touch each group's keys.

    A single server runs a script over any keys: one group (cut at ``SCRIPT_BATCH``).  A
    cluster refuses a script whose keys span slots, so there each slot is a group of its own.
    Order within a group is the order of ``keys``, which keeps one user's changes in sequence.
    """
    groups: dict[int, list[int]] = {}
    if is_cluster_client(redis):
        for i, key in enumerate(keys):
            groups.setdefault(key_slot(key.encode()), []).append(i)
        chunks = list(groups.values())
    else:
        chunks = [list(range(len(keys)))]
    return [chunk[at : at + SCRIPT_BATCH] for chunk in chunks for at in range(0, len(chunk), SCRIPT_BATCH)]


async def run_scripts(
    redis: aioredis.Redis, calls: list[ScriptCall], *, raise_on_error: bool = False
) -> list[Any]:
    """Many script calls in one round trip; a failed call's result is its exception, or with
    ``raise_on_error`` the first failure is raised once every call has run.

    EVALSHA goes out without asking first whether the server knows the script (a registered
    script in a redis-py pipeline costs a SCRIPT EXISTS round trip on every execute).  A server
    that has not cached it yet (new, restarted, or a promoted replica) refuses the call with
    NOSCRIPT having run nothing; such calls are repeated one by one, which loads the script.
    """
    if not calls:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for script, script_keys, args in calls:
            pipe.evalsha(script.sha, len(script_keys), *script_keys, *args)
        results: list[Any] = await pipe.execute(raise_on_error=False)
    for i, result in enumerate(results):
        if isinstance(result, NoScriptError):
            script, script_keys, args = calls[i]
            try:
                results[i] = await script(keys=script_keys, args=args)
            except RedisError as exc:
                results[i] = exc
    if raise_on_error:
        for result in results:
            if isinstance(result, Exception):
                raise result
    return results


def redacted(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


async def probe(url: str, *, attempts: int = 3, pause: float = 1.0) -> str | None:
    """Why ``url`` cannot serve the bridge, or None: unreachable, a cluster named as a single
    server or the other way round, or a cluster that does not serve every slot."""
    problem: str | None = None
    for attempt in range(attempts):
        if attempt:
            await asyncio.sleep(pause)
        client = connect(url, socket_timeout=2, socket_connect_timeout=2)
        try:
            info: Any = await client.info("cluster")
            if is_cluster_url(url):
                state: Any = await cast(RedisCluster, client).cluster_info()
                if state.get("cluster_state") != "ok":
                    return f"the cluster's state is {state.get('cluster_state')!r}, not 'ok'"
            elif str(info.get("cluster_enabled", 0)) == "1":
                return "it names a node of a Redis Cluster: write redis+cluster://host:port instead"
            return None
        except RedisClusterException as exc:
            problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "not enabled" in problem.lower():
                return "it is not a Redis Cluster: write redis:// for a single server"
        except (RedisError, OSError) as exc:
            problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        finally:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()
    return f"not reachable: {problem}"
