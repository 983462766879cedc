"""Posting UCI call events to the callback URLs that sessions registered at login.

Each UCI session gets its own ordered delivery lane, so a session sees RINGING before CONNECTED
before HANGUP even when the control API fires them back to back, while a slow receiver of one
user never delays another user's events.  [INF] A failed delivery is recorded and not retried:
nothing documents STARFACE retrying, and the bridge must converge anyway (level-triggered).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from service.sandbox.clock import Clock
from service.sandbox.starface_records import CallEvent
from service.sandbox.starface_wire import Wire, dumps_call
from service.starface.xmlrpc import Fault, XmlRpcError, parse_response

DELIVERY_TIMEOUT_SECONDS = 5.0
MAX_RESPONSE_BYTES = 64 * 1024
MAX_RECORDED_DELIVERIES = 10_000


@dataclass(frozen=True)
class Delivery:
    seq: int
    at: float
    login: str
    session_id: str
    url: str
    method: str
    struct: dict[str, Any]
    status: int | None  # HTTP status, None when no answer arrived
    ok: bool  # 2xx and an XML-RPC response that is not a fault
    error: str | None
    latency_ms: float

    def view(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at,
            "login": self.login,
            "session": self.session_id,
            "url": self.url,
            "method": self.method,
            "params": self.struct,
            "callId": self.struct.get("id"),
            "state": self.struct.get("state"),
            "status": self.status,
            "ok": self.ok,
            "error": self.error,
            "latencyMs": round(self.latency_ms, 3),
        }


_Job = tuple[CallEvent, "asyncio.Future[Delivery]"]


class Dispatcher:
    """Owns one aiohttp session and one worker task per UCI session with pending events."""

    def __init__(
        self,
        clock: Clock,
        ssl_context: ssl.SSLContext,
        is_live: Callable[[str, str], bool],
        timeout: float = DELIVERY_TIMEOUT_SECONDS,
        wire: Wire | None = None,
    ) -> None:
        self._clock = clock
        self.wire = wire or Wire()
        self._ssl = ssl_context
        self._is_live = is_live
        self._timeout = timeout
        self._http: aiohttp.ClientSession | None = None
        self._lanes: dict[str, asyncio.Queue[_Job]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._seq = 0
        self.deliveries: deque[Delivery] = deque(maxlen=MAX_RECORDED_DELIVERIES)

    def submit(self, events: list[CallEvent]) -> list[asyncio.Future[Delivery]]:
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Delivery]] = []
        for event in events:
            future: asyncio.Future[Delivery] = loop.create_future()
            lane = self._lanes.get(event.session_id)
            if lane is None:
                lane = self._lanes[event.session_id] = asyncio.Queue()
                self._workers[event.session_id] = asyncio.create_task(self._drain(event.session_id, lane))
            lane.put_nowait((event, future))
            futures.append(future)
        return futures

    async def _drain(self, session_id: str, lane: asyncio.Queue[_Job]) -> None:
        future: asyncio.Future[Delivery] | None = None
        try:
            while not lane.empty():
                event, future = lane.get_nowait()
                delivery = await self._deliver(event)
                if not future.done():
                    future.set_result(delivery)
        finally:
            if future is not None and not future.done():
                future.cancel()
            # A lane lives only while it has work; the next event for the session starts a new one.
            self._lanes.pop(session_id, None)
            self._workers.pop(session_id, None)
            while not lane.empty():
                _, pending = lane.get_nowait()
                pending.cancel()

    async def _deliver(self, event: CallEvent) -> Delivery:
        url = event.callback.url(event.login)
        started = time.perf_counter()
        status: int | None = None
        ok = False
        error: str | None = None
        if not self._is_live(event.login, event.session_id):
            # The PBX forgets a session's callback with the session; nothing is posted.
            error = "session gone"
        else:
            try:
                body = dumps_call(event.method, [event.struct], self.wire.types)
                status, body = await self._post(url, body)
                if 200 <= status < 300:
                    parse_response(body, max_bytes=MAX_RESPONSE_BYTES)
                    ok = True
                else:
                    error = f"HTTP {status}"
            except Fault as exc:
                error = f"fault {exc.code}"
            except XmlRpcError as exc:
                error = f"bad response: {exc.reason}"
            except TimeoutError:
                error = "timeout"
            except (aiohttp.ClientError, OSError) as exc:
                error = type(exc).__name__
        self._seq += 1
        delivery = Delivery(
            seq=self._seq,
            at=self._clock.now(),
            login=event.login,
            session_id=event.session_id,
            url=url,
            method=event.method,
            struct=event.struct,
            status=status,
            ok=ok,
            error=error,
            latency_ms=(time.perf_counter() - started) * 1000,
        )
        self.deliveries.append(delivery)
        return delivery

    async def _post(self, url: str, body: bytes) -> tuple[int, bytes]:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout))
        async with self._http.post(
            url,
            data=body,
            headers={"Content-Type": "text/xml; charset=utf-8", "User-Agent": "STARFACE sandbox"},
            ssl=self._ssl if url.startswith("https://") else False,
        ) as response:
            content = await response.content.read(MAX_RESPONSE_BYTES + 1)
            return response.status, content

    async def close(self) -> None:
        for task in list(self._workers.values()):
            task.cancel()
        for task in list(self._workers.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._http is not None:
            await self._http.close()
            self._http = None
