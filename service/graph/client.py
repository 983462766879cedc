"""A small Microsoft Graph client: JSON requests, ``$batch``, and patience with throttling.

Graph answers 429 with ``Retry-After`` when an app exceeds its rate (presence reads: 1,500 requests
per 30 s per app and tenant) and 503/504 when it is busy.  Both are waited out and retried; a
client-side sliding window keeps bulk sweeps under the rate in the first place.  Inside a
``$batch`` each item is throttled on its own, so throttled items are retried individually.
Bearer tokens are passed per call and never appear in errors or logs.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import json
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp

from service.core import metrics
from service.core.clock import Clock, SystemClock

log = logging.getLogger(__name__)

BATCH_LIMIT = 20
T = TypeVar("T")
# Gives a bearer token; ``True`` asks for a new one instead of a cached one.
TokenSource = Callable[[bool], Awaitable[str]]
_RETRYABLE = frozenset({429, 502, 503, 504})


class GraphError(Exception):
    """Graph refused a request; ``status`` and Graph's ``code`` tell the caller what to do."""

    def __init__(self, method: str, path: str, status: int, code: str = "", message: str = "") -> None:
        self.method = method
        self.path = path
        self.status = status
        self.code = code
        self.message = message
        # The path never carries secrets (ids and filters only); Graph's message never echoes tokens.
        super().__init__(f"Graph {method} {path.split('?')[0]} -> {status} {code}: {message[:300]}".rstrip())


class GraphUnavailable(GraphError):
    """Graph could not be reached or kept throttling/failing after every retry."""


class GraphThrottled(GraphUnavailable):
    """Graph asked to wait longer than this client may: ``retry_after`` seconds from now.

    The caller gives the work back and comes again then; waiting inside would hold whatever
    the caller holds (the reconciler's claim on a user) past its end.
    """

    def __init__(self, method: str, path: str, status: int, retry_after: float, code: str = "") -> None:
        self.retry_after = retry_after
        super().__init__(method, path, status, code, f"asked to retry after {retry_after:g} s")


@dataclass(frozen=True)
class GraphResponse:
    status: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchRequest:
    """One ``$batch`` item; ``url`` is relative to the version root, e.g. ``/users?$filter=...``."""

    method: str
    url: str
    body: Any = None


class RateLimiter:
    """At most ``limit`` requests in any ``window`` seconds of the given clock."""

    def __init__(self, limit: int, window: float, clock: Clock) -> None:
        if limit <= 0 or window <= 0:
            raise ValueError("limit and window must be positive")
        self.limit = limit
        self.window = window
        self.clock = clock
        self._sent: collections.deque[float] = collections.deque()
        self._lock = asyncio.Lock()

    async def acquire(self, cost: int = 1) -> None:
        async with self._lock:
            for _ in range(min(cost, self.limit)):
                while True:
                    now = self.clock.now()
                    while self._sent and self._sent[0] <= now - self.window:
                        self._sent.popleft()
                    if len(self._sent) < self.limit:
                        self._sent.append(now)
                        break
                    await self.clock.sleep(self._sent[0] + self.window - now + 0.001)


def retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date); None when absent or bad."""
    value = headers.get("Retry-After") or headers.get("retry-after")
    if value is None:
        return None
    value = str(value).strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def _backoff(attempt: int) -> float:
    # Full jitter keeps many throttled callers from retrying in lockstep.
    return float(min(60.0, 2.0**attempt) * (0.5 + random.random() / 2))


def _error_fields(body: Any) -> tuple[str, str]:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        return str(error.get("code", "")), str(error.get("message", ""))
    return "", ""


class GraphClient:
    def __init__(
        self,
        base_url: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        clock: Clock | None = None,
        timeout: float = 30.0,
        max_attempts: int = 8,
        limiter: RateLimiter | None = None,
        max_wait: float | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.ssl_context = ssl_context
        self.clock: Clock = clock or SystemClock()
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.limiter = limiter
        # Longest Retry-After this client waits itself; a longer one raises GraphThrottled.
        self.max_wait = max_wait
        self._session: aiohttp.ClientSession | None = None

    def http(self) -> aiohttp.ClientSession:
        """The client's keep-alive HTTP session (made on first use)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self.ssl_context if self.ssl_context else True),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                # Proxy variables of the host must not redirect Graph traffic silently.
                trust_env=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        token: str,
        body: Any = None,
        ok: Sequence[int] = (200, 201, 202, 204),
    ) -> GraphResponse:
        """Send one request, waiting out throttling; raise ``GraphError`` on any other failure."""
        url = f"{self.base_url}{path}"
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        last_status, last_code, last_message = 0, "", "no attempt made"
        last_delay: float | None = None
        for attempt in range(self.max_attempts):
            if self.limiter is not None:
                await self.limiter.acquire()
            started = time.monotonic()
            try:
                async with self.http().request(method, url, headers=headers, json=body) as response:
                    text = await response.text()
                    status = response.status
                    response_headers = dict(response.headers)
            except (aiohttp.ClientError, TimeoutError) as exc:
                metrics.GRAPH_CALL_ERRORS.labels("unreachable").inc()
                last_status, last_code, last_message = 0, "unreachable", type(exc).__name__
                if attempt + 1 < self.max_attempts:
                    await self.clock.sleep(_backoff(attempt))
                continue
            metrics.GRAPH_CALL_SECONDS.labels(method, str(status)).observe(time.monotonic() - started)
            parsed = _parse(text)
            if status in ok:
                return GraphResponse(status, parsed, response_headers)
            metrics.GRAPH_CALL_ERRORS.labels(str(status)).inc()
            code, message = _error_fields(parsed)
            if status in _RETRYABLE:
                metrics.GRAPH_THROTTLED.labels(str(status)).inc()
                last_status, last_code, last_message = status, code, message
                delay = retry_after(response_headers, self.clock.now())
                if delay is not None and self.max_wait is not None and delay > self.max_wait:
                    raise GraphThrottled(method, path, status, delay, code)
                last_delay = delay
                if attempt + 1 < self.max_attempts:
                    await self.clock.sleep(delay if delay is not None else _backoff(attempt))
                continue
            raise GraphError(method, path, status, code, message)
        if last_delay is not None:
            # Graph's last word was a time to come back: the caller keeps it, whatever the attempt.
            raise GraphThrottled(method, path, last_status, last_delay, last_code)
        raise GraphUnavailable(
            method,
            path,
            last_status,
            last_code,
            f"gave up after {self.max_attempts} attempts: {last_message}",
        )

    async def batch(self, items: Sequence[BatchRequest], *, token: str) -> list[GraphResponse]:
        """Run items through ``$batch`` (20 per call); throttled items are retried on their own."""
        results: list[GraphResponse | None] = [None] * len(items)
        for start in range(0, len(items), BATCH_LIMIT):
            await self._batch_chunk(
                items, list(range(start, min(start + BATCH_LIMIT, len(items)))), token, results
            )
        return [r if r is not None else GraphResponse(0, None) for r in results]

    async def _batch_chunk(
        self,
        items: Sequence[BatchRequest],
        indexes: list[int],
        token: str,
        results: list[GraphResponse | None],
    ) -> None:
        pending = indexes
        for attempt in range(self.max_attempts):
            if self.limiter is not None:
                # Graph counts every item of a batch against the rate, not the envelope.
                await self.limiter.acquire(len(pending))
            requests: list[dict[str, Any]] = []
            for index in pending:
                entry: dict[str, Any] = {
                    "id": str(index),
                    "method": items[index].method,
                    "url": items[index].url,
                }
                if items[index].body is not None:
                    entry["body"] = items[index].body
                    entry["headers"] = {"Content-Type": "application/json"}
                requests.append(entry)
            envelope = await self.request("POST", "/v1.0/$batch", token=token, body={"requests": requests})
            responses = envelope.body.get("responses", []) if isinstance(envelope.body, dict) else []
            waits: list[float] = []
            retry: list[int] = []
            answered: set[int] = set()
            for item in responses:
                if not isinstance(item, dict) or not str(item.get("id", "")).isdigit():
                    continue
                index = int(item["id"])
                if index not in pending:
                    continue
                answered.add(index)
                status = int(item.get("status", 0))
                item_headers = {str(k): str(v) for k, v in (item.get("headers") or {}).items()}
                if status in _RETRYABLE:
                    metrics.GRAPH_THROTTLED.labels(str(status)).inc()
                    retry.append(index)
                    delay = retry_after(item_headers, self.clock.now())
                    waits.append(delay if delay is not None else _backoff(attempt))
                    continue
                results[index] = GraphResponse(status, item.get("body"), item_headers)
            # An item the envelope did not answer is retried like a throttled one.
            retry.extend(i for i in pending if i not in answered)
            if not retry:
                return
            pending = sorted(set(retry))
            if attempt + 1 < self.max_attempts:
                await self.clock.sleep(max(waits) if waits else _backoff(attempt))
        raise GraphUnavailable("POST", "/v1.0/$batch", 429, "", f"{len(pending)} items still throttled")


async def with_token(source: TokenSource, call: Callable[[str], Awaitable[T]]) -> T:
    """Run ``call`` with a cached token; on 401 (revoked or expired early) once more with a new one."""
    try:
        return await call(await source(False))
    except GraphError as exc:
        if exc.status != 401:
            raise
    return await call(await source(True))


def _parse(text: str) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None
