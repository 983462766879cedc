"""The access log of the public endpoints: one JSON event per request, never a secret.

Each event names the method, the path with its secrets replaced (the UCI callback path carries a
per-session token; query strings such as Graph's ``validationToken`` are left out), the status,
the duration and the request id (added by the log formatter from ``RequestIdMiddleware``).  A
request whose client went away before an answer is logged with status 499, as nginx does.
"""

from __future__ import annotations

import logging
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("presence_bridge.access")

# Paths whose last segment is a secret.
_SECRET_SEGMENTS = (re.compile(r"^(/starface/uci/)[^/]+"),)
_MAX_PATH = 200
CLIENT_GONE = 499


def loggable_path(path: str) -> str:
    """``path`` with its secrets replaced, shortened, and safe to encode as UTF-8."""
    for pattern in _SECRET_SEGMENTS:
        path = pattern.sub(r"\1{token}", path)
    if len(path) > _MAX_PATH:
        path = path[:_MAX_PATH] + "..."
    # A percent-decoded path may hold lone surrogates, which no log handler can encode.
    return path.encode("utf-8", "backslashreplace").decode("utf-8")


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = CLIENT_GONE

        async def send_recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_recording)
        except Exception:
            status = 500
            raise
        finally:
            duration_ms = (time.perf_counter() - started) * 1000
            method = str(scope.get("method", "?"))[:16]
            path = loggable_path(str(scope.get("path", "")))
            log.info(
                "%s %s %d %.1fms",
                method,
                path,
                status,
                duration_ms,
                extra={
                    "fields": {
                        "method": method,
                        "path": path,
                        "status": status,
                        "duration_ms": round(duration_ms, 2),
                    }
                },
            )
