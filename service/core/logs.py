"""Structured logs: one JSON event per line, with the request id, and never a secret.

Secrets are kept out of log calls by construction; the redacting filter is the second line of
defence for text that came from elsewhere (an exception message quoting a header, a URL with a
password).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_REDACT = [
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9\-._~+/]+=*"), r"\1[redacted]"),
    (
        re.compile(
            r"(?i)((?:password|passwd|secret|token|clientstate|authtoken)[\"']?\s*[:=]\s*[\"']?)[^\s\"'&,]+"
        ),
        r"\1[redacted]",
    ),
    (re.compile(r"(?i)(de\.vertico\.starface\.(?:auth|jwt)=)[^&\s]+"), r"\1[redacted]"),
    (re.compile(r"(?i)(rediss?://[^:/@\s]*:)[^@\s]+@"), r"\1[redacted]@"),
    (re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+"), "[redacted-jwt]"),
]


def redact(text: str) -> str:
    for pattern, replacement in _REDACT:
        text = pattern.sub(replacement, text)
    return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):  # structured events (the access log) carry their own keys
            event.update((k, v) for k, v in fields.items() if k not in event)
        rid = request_id.get()
        if rid:
            event["request_id"] = rid
        if record.exc_info:
            event["error"] = redact(self.formatException(record.exc_info))
        return json.dumps(event, ensure_ascii=False)


class TracebackSampler(logging.Filter):
    """Keeps at most one traceback per kind (logger and exception type) per ``window`` seconds.

    A bad request must be counted, not traced: a flood of them would otherwise write kilobytes of
    traceback each.  The record itself stays, with the exception's type in place of its traceback.
    """

    def __init__(self, window: float = 60.0, clock: Any = time.monotonic) -> None:
        super().__init__()
        self.window = window
        self.clock = clock
        self._last: dict[tuple[str, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or record.exc_info[0] is None:
            return True
        kind = (record.name, record.exc_info[0].__qualname__)
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.window:
            record.msg = f"{record.getMessage()} ({kind[1]}; traceback sampled)"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        else:
            if len(self._last) > 1024:
                self._last.clear()
            self._last[kind] = now
        return True


_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def _route_uvicorn_to_root() -> None:
    """uvicorn's ``Config`` applies its default ``LOGGING_CONFIG`` (plain-text handlers, no
    propagation) each time one is built, after ``setup``; rewriting that default in place makes every
    later ``Config`` leave its loggers to the root handler."""
    try:
        from uvicorn.config import LOGGING_CONFIG
    except ImportError:  # pragma: no cover - uvicorn is a dependency
        return
    LOGGING_CONFIG["handlers"] = {}
    LOGGING_CONFIG["loggers"] = {name: {"handlers": [], "propagate": True} for name in _UVICORN_LOGGERS}


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(TracebackSampler())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's own loggers go through the same handler, as JSON.
    for name in _UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    _route_uvicorn_to_root()


class RequestIdMiddleware:
    """Gives every request an id (a sane incoming ``X-Request-Id`` or a new one), logs and echoes it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if re.fullmatch(r"[A-Za-z0-9._-]{1,64}", incoming) else uuid.uuid4().hex[:16]
        token = request_id.set(rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)
