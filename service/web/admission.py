"""Admission to the public endpoints: a cap on requests in progress, and a deadline for bodies.

Beyond ``max_in_flight`` requests a process answers at once with 503 and ``Retry-After``, before
reading a byte of the body, so nothing is parsed or decrypted for a request that cannot be served
and the accepted throughput stays at capacity however much more is offered (Graph retries a 503,
docs/protocols.md, "Change notifications").  The health endpoints are never shed: an overloaded
process is still alive.  A body that has not fully arrived ``body_seconds`` after the request
began is answered 408 and the connection closed; the headers' deadline is the server's
(``service.web.server``).
"""

from __future__ import annotations

import asyncio
import json
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core import metrics

UNSHED = frozenset({"/livez", "/healthz", "/readyz"})


class _BodyTimeout(BaseException):
    # A BaseException, as cancellation is: it must pass the endpoints' last-resort
    # ``except Exception`` guards, which would otherwise answer 400 and log a traceback.
    pass


async def _answer(send: Send, status: int, error: str, extra: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"error": error}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Shedding:
    """At most ``max_in_flight`` requests at once; beyond, 503 before a byte of the body is read."""

    def __init__(self, app: ASGIApp, *, max_in_flight: int) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight and scope.get("path") not in UNSHED:
            # Counted, not logged one by one: at five times capacity that would be most of the work.
            metrics.REQUESTS_SHED.inc()
            # The connection stays open: a client that comes back reuses it, and a new TCP and
            # TLS handshake per shed request would cost more than the request itself.
            await _answer(send, 503, "overloaded", [(b"retry-after", b"1")])
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


class BodyDeadline:
    """A body not fully received ``body_seconds`` after the request began is answered 408."""

    def __init__(self, app: ASGIApp, *, body_seconds: float) -> None:
        self.app = app
        self.body_seconds = body_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = time.monotonic() + self.body_seconds
        started = False

        async def receive_by_deadline() -> Message:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _BodyTimeout
            try:
                return await asyncio.wait_for(receive(), left)
            except TimeoutError:
                raise _BodyTimeout from None

        async def send_noting_start(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive_by_deadline, send_noting_start)
        except _BodyTimeout:
            metrics.REQUEST_BODY_TIMEOUTS.inc()
            if not started:
                # Closed: the rest of that body may still come, and no request can follow it.
                await _answer(send, 408, "request body not received in time", [(b"connection", b"close")])
