"""``POST /starface/uci/{token}``: where the PBX delivers a user's UCI call events.

The endpoint is public, so it trusts nothing: the path token (one unguessable token per UCI
session, looked up by its SHA-256) names the user, and an unknown token gets a bare 404.  The body
is bounded while it is read, parsed by ``service.starface.xmlrpc`` (no DTDs, no entities, 64 KiB), and a
``receiveCallState`` becomes a ``CallEvent`` on the call stream.  When the event cannot be stored
(Redis down) the answer is 503 at once, so the PBX may retry; nothing here is ever slow.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from service.core import keys, metrics
from service.core.settings import Settings
from service.starface import xmlrpc
from service.starface.callback_tokens import PATH_PREFIX, login_for_token
from service.starface.calls import CallEvent, CallFormatError, append_call
from service.web.body import BodyTooLarge, read_bounded

log = logging.getLogger(__name__)

MAX_BODY_BYTES = xmlrpc.DEFAULT_MAX_BYTES
XML = "text/xml; charset=utf-8"

# Interoperability fault codes of the XML-RPC spec extensions.
FAULT_PARSE = -32700

# v30/v22: ucp.vNN.events.call.receiveCallState; v20: ucp.v20.client.communication.call.…
_CALL_STATE = re.compile(r"ucp\.v\d+\.(events|client\.communication)\.call\.receiveCallState")


async def _count(redis: aioredis.Redis, reason: str) -> None:
    metrics.STARFACE_CALLBACKS.labels(reason).inc()
    # A counter must never turn a refusal into a different answer.
    with contextlib.suppress(RedisError, OSError):
        await redis.hincrby(keys.UCI_CALLBACK_REFUSED, reason, 1)


async def _bounded_body(request: Request, limit: int) -> bytes | None:
    """The body, or ``None`` as soon as it exceeds ``limit`` (read at most ``limit + 1`` bytes)."""
    try:
        return await read_bounded(request, limit)
    except BodyTooLarge:
        return None


_UNUSABLE_SEEN: set[tuple[str, tuple[str, ...]]] = set()
_UNUSABLE_SEEN_MAX = 256


def _log_unusable_once(method: str, struct: Any, problem: str) -> None:
    """One log line per (method, keys) shape, so a PBX sending a new shape is noticed but never floods."""
    shape = tuple(sorted(str(k)[:64] for k in struct)[:32]) if isinstance(struct, dict) else ()
    if (method, shape) in _UNUSABLE_SEEN or len(_UNUSABLE_SEEN) >= _UNUSABLE_SEEN_MAX:
        return
    _UNUSABLE_SEEN.add((method, shape))
    log.warning("unusable STARFACE call event %s with keys %s: %s", method, list(shape), problem)


def _xml(body: bytes, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type=XML)


def _fault(code: int, reason: str) -> Response:
    return _xml(xmlrpc.dumps_fault(code, reason), status=400)


async def receive(request: Request) -> Response:
    """Never raises: a body this code did not foresee is counted and refused, never a 5xx."""
    try:
        return await _receive(request)
    except ClientDisconnect:
        return Response(status_code=400)
    except Exception:
        await _count(request.app.state.redis, "internal_error")
        log.warning("STARFACE callback refused after an unexpected error", exc_info=True)
        return _fault(FAULT_PARSE, "malformed")


async def _receive(request: Request) -> Response:
    redis: aioredis.Redis = request.app.state.redis
    settings: Settings = request.app.state.settings
    token = str(request.path_params.get("token", ""))
    try:
        login = await login_for_token(redis, token)
    except (RedisError, OSError):
        return Response(status_code=503, headers={"Retry-After": "5"})
    if login is None:
        await _count(redis, "unknown_token")
        return Response(status_code=404)

    body = await _bounded_body(request, MAX_BODY_BYTES)
    if body is None:
        await _count(redis, "too_large")
        return Response(status_code=413)
    try:
        method, params = xmlrpc.parse_call(body, MAX_BODY_BYTES)
    except xmlrpc.XmlRpcError as exc:
        await _count(redis, exc.reason)
        log.info("refused STARFACE callback for login %s: %s", login, exc.reason)
        return _fault(FAULT_PARSE, exc.reason)

    if not _CALL_STATE.fullmatch(method):
        # Other event services (callChangesIdEvent, MWI, conference) are acknowledged so the PBX
        # keeps the session healthy, and not queued: the reconciler only needs call states.
        metrics.STARFACE_CALLBACKS.labels("ignored").inc()
        return _xml(xmlrpc.dumps_response(True))
    struct = params[0] if params else None
    try:
        event = CallEvent.from_call_state(login, struct, received_at=time.time())
    except CallFormatError as exc:
        # Well-formed XML-RPC the bridge cannot use: acknowledged, so the PBX keeps the session,
        # and counted; the first of each shape is logged so a new PBX dialect is seen.
        await _count(redis, "bad_call_state")
        _log_unusable_once(method, struct, str(exc))
        return _xml(xmlrpc.dumps_response(True))
    try:
        await append_call(redis, settings.partitions, event, settings.presence_stream_maxlen)
    except (RedisError, OSError):
        return Response(status_code=503, headers={"Retry-After": "5"})
    metrics.STARFACE_CALLBACKS.labels("accepted").inc()
    return _xml(xmlrpc.dumps_response(True))


def routes() -> list[BaseRoute]:
    return [Route(PATH_PREFIX + "{token}", receive, methods=["POST"])]
