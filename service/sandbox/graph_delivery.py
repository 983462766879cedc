"""Change and lifecycle notification delivery of the Graph sandbox: coalescing, POSTs, retries."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import aiohttp

from service.sandbox.graph_host import GraphHost
from service.sandbox.graphstate import format_datetime

log = logging.getLogger(__name__)

DELIVERY_LOG_LIMIT = 10_000
RESPONSE_READ_LIMIT = 64 * 1024


# ---- delivery --------------------------------------------------------------------------------


@dataclass
class PendingItem:
    subscription_id: str
    app_id: str
    rich: bool
    payload: dict[str, Any]


class Notifier:
    """Coalesces items per endpoint, POSTs them, retries with backoff, logs every attempt."""

    def __init__(self, sandbox: GraphHost) -> None:
        self.sandbox = sandbox
        self.options = sandbox.options
        self.log: deque[dict[str, Any]] = deque(maxlen=DELIVERY_LOG_LIMIT)
        self._attempt_ids = 0
        self._queues: dict[tuple[str, str], list[PendingItem]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._flushing: set[tuple[str, str]] = set()
        self.http: aiohttp.ClientSession | None = None

    @property
    def in_flight(self) -> int:
        return len(self._tasks) + sum(len(q) for q in self._queues.values())

    def enqueue(self, url: str, channel: str, item: PendingItem) -> None:
        key = (url, channel)
        self._queues.setdefault(key, []).append(item)
        if key not in self._flushing:
            self._flushing.add(key)
            self._spawn(self._flush(key))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _flush(self, key: tuple[str, str]) -> None:
        # Real time, not the sandbox clock: the window only gathers changes that happen together.
        await asyncio.sleep(self.options.coalesce_seconds)
        self._flushing.discard(key)
        queue = self._queues.pop(key, [])
        size = max(1, self.options.max_items_per_post)
        for start in range(0, len(queue), size):
            self._spawn(self._deliver(key[0], key[1], queue[start : start + size]))

    def _live(self, channel: str, items: list[PendingItem]) -> list[PendingItem]:
        now = self.sandbox.clock.now()
        live = []
        for item in items:
            subscription = self.sandbox.subscriptions.get(item.subscription_id)
            if subscription is None:
                continue
            ok = subscription.active(now) if channel == "lifecycle" else subscription.delivering(now)
            if ok:
                live.append(item)
        return live

    def _body(self, items: list[PendingItem]) -> dict[str, Any]:
        body: dict[str, Any] = {"value": [item.payload for item in items]}
        apps = sorted({item.app_id for item in items if item.rich})
        if apps:
            version = self.options.validation_token_version
            body["validationTokens"] = [self.sandbox.entra.validation_token(a, version) for a in apps]
        return body

    async def _deliver(self, url: str, channel: str, items: list[PendingItem]) -> None:
        clock = self.sandbox.clock
        started = clock.now()
        attempt = 0
        while True:
            attempt += 1
            live = self._live(channel, items)
            if not live:
                self._record(url, channel, items, attempt, None, None, "dropped", "subscription inactive")
                return
            timeout = self.options.delivery_timeout if attempt == 1 else self.options.retry_timeout
            status, latency, error = await self._post_json(url, self._body(live), timeout)
            if status is not None and 200 <= status < 300:
                self._record(url, channel, live, attempt, status, latency, "delivered", None)
                return
            delay = min(
                self.options.backoff_base_seconds * 2 ** (attempt - 1), self.options.backoff_max_seconds
            )
            retry_at = clock.now() + delay
            if (
                attempt >= self.options.max_attempts
                or retry_at - started > self.options.retry_horizon_seconds
            ):
                self._record(url, channel, live, attempt, status, latency, "gave-up", error)
                return
            entry = self._record(url, channel, live, attempt, status, latency, "retry-scheduled", error)
            entry["nextAttemptAt"] = format_datetime(retry_at)
            await clock.sleep_until(retry_at)

    async def _post_json(
        self, url: str, body: dict[str, Any], limit_seconds: float
    ) -> tuple[int | None, float, str | None]:
        """One POST; returns (status or None, real latency in ms, error label or None)."""
        assert self.http is not None, "the sandbox app is not running"
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json; charset=utf-8"}
        begin = time.perf_counter()
        try:
            async with self.http.post(
                url, data=data, headers=headers, timeout=aiohttp.ClientTimeout(total=limit_seconds)
            ) as response:
                await read_capped(response)
                status = response.status
        except TimeoutError:
            return None, (time.perf_counter() - begin) * 1000, "timeout"
        except aiohttp.ClientError as exc:
            return None, (time.perf_counter() - begin) * 1000, f"connection: {type(exc).__name__}"
        return status, (time.perf_counter() - begin) * 1000, None

    def _record(
        self,
        url: str,
        channel: str,
        items: list[PendingItem],
        attempt: int,
        status: int | None,
        latency: float | None,
        outcome: str,
        error: str | None,
    ) -> dict[str, Any]:
        self._attempt_ids += 1
        entry: dict[str, Any] = {
            "id": self._attempt_ids,
            "kind": channel,
            "url": url,
            "attempt": attempt,
            "at": format_datetime(self.sandbox.clock.now()),
            "status": status,
            "latencyMs": None if latency is None else round(latency, 1),
            "outcome": outcome,
            "error": error,
            "items": len(items),
            "subscriptionIds": sorted({i.subscription_id for i in items}),
        }
        self.log.append(entry)
        return entry

    def record_validation(
        self, url: str, status: int | None, latency: float, outcome: str, error: str | None
    ) -> None:
        self._attempt_ids += 1
        self.log.append(
            {
                "id": self._attempt_ids,
                "kind": "validation",
                "url": url,
                "attempt": 1,
                "at": format_datetime(self.sandbox.clock.now()),
                "status": status,
                "latencyMs": round(latency, 1),
                "outcome": outcome,
                "error": error,
                "items": 0,
                "subscriptionIds": [],
            }
        )


async def read_capped(response: aiohttp.ClientResponse) -> bytes:
    """The whole body, but never more than RESPONSE_READ_LIMIT bytes of it: receivers are untrusted."""
    chunks: list[bytes] = []
    size = 0
    while size < RESPONSE_READ_LIMIT:
        chunk = await response.content.read(RESPONSE_READ_LIMIT - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
