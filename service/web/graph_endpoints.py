"""The public Graph endpoints: validation handshake, notifications and lifecycle events.

Graph judges this endpoint: the handshake must be answered within 10 s and every notification
with a 2xx within 3 s.  So the work here is bounded: read a bounded body, check clientState,
verify the validationTokens, check the HMAC, decrypt, queue, answer 202.  Forged or tampered
items are dropped and counted, never revealed to the sender.  When an item cannot be judged or
stored right now, the answer is 503 at once, so Graph retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from service.bridge.deliveries import note_notifications
from service.bridge.streams import append_lifecycle_batch, append_presence_batch
from service.core import keys, metrics
from service.core.partitions import Partitions
from service.core.secretbox import SealError
from service.graph.certificates import CertificateStore
from service.graph.clientstate import ClientStates, matches
from service.graph.crypto import ContentError, decrypt_content
from service.graph.presence import PresenceChange, PresenceFormatError
from service.graph.validation_tokens import KeysUnavailable, TokenRejected, TokenVerifier
from service.web.body import BadJson, BodyTooLarge, clean_text, loads_bounded, read_bounded

log = logging.getLogger(__name__)

MAX_VALIDATION_TOKEN = 4096
LIFECYCLE_EVENTS = frozenset({"reauthorizationRequired", "subscriptionRemoved", "missed"})
# Graph's ids are GUIDs and its clientState at most 128 characters; the bounds leave room, no more.
MAX_ID = 256
MAX_TOKEN = 16 * 1024


class Unavailable(Exception):
    """Something this request needs is down; the answer is 503 so Graph retries."""


@dataclass
class Ingest:
    redis: aioredis.Redis
    client_states: ClientStates
    certificates: CertificateStore
    verifier: TokenVerifier
    tenant_id: str
    max_bytes: int
    stream_maxlen: int
    partitions: Partitions


def _plain(status: int, text: str) -> PlainTextResponse:
    return PlainTextResponse(text, status_code=status, headers={"X-Content-Type-Options": "nosniff"})


def _handshake(request: Request) -> Response | None:
    if "validationToken" not in request.query_params:
        return None
    token = request.query_params["validationToken"]  # Starlette has already URL-decoded it
    if not token or len(token) > MAX_VALIDATION_TOKEN:
        return _plain(400, "validationToken missing or too long")
    return PlainTextResponse(token, status_code=200, headers={"X-Content-Type-Options": "nosniff"})


async def _handshake_or_items(
    request: Request, ingest: Ingest
) -> tuple[list[dict[str, Any]], dict[str, Any]] | Response:
    """Both endpoints start alike: the validation handshake, or a bounded, well-shaped body."""
    return _handshake(request) or await _items(request, ingest)


async def _items(request: Request, ingest: Ingest) -> tuple[list[dict[str, Any]], dict[str, Any]] | Response:
    try:
        body = await read_bounded(request, ingest.max_bytes)
    except BodyTooLarge as exc:
        metrics.NOTIFICATION_ITEMS.labels("body_too_large").inc()
        return _plain(413, f"body larger than {exc.limit} bytes")
    except ClientDisconnect:
        return _plain(400, "client went away")
    try:
        payload = loads_bounded(body)
    except BadJson:
        return _plain(400, "body is not JSON")
    if not isinstance(payload, dict) or not isinstance(payload.get("value"), list):
        return _plain(400, "expected an object with a 'value' array")
    items = payload["value"]
    if not all(isinstance(item, dict) for item in items):
        return _plain(400, "every entry of 'value' must be an object")
    return items, payload


async def _count(redis: aioredis.Redis, dropped: Counter[str]) -> None:
    if not dropped:
        return
    for reason, count in dropped.items():
        metrics.NOTIFICATION_ITEMS.labels(reason).inc(count)
    async with redis.pipeline(transaction=False) as pipe:
        for reason, count in dropped.items():
            pipe.hincrby(keys.DROPPED_COUNTS, reason, count)
        await pipe.execute()
    log.info("dropped notification items: %s", dict(dropped))


async def _authentic(
    items: list[dict[str, Any]], ingest: Ingest, dropped: Counter[str]
) -> list[dict[str, Any]]:
    """Items whose subscription is ours and whose clientState matches, in constant time."""
    typed = []
    for item in items:
        # A field of the wrong type, too long, or with a NUL or lone surrogate is dropped as forged.
        if clean_text(item.get("subscriptionId"), MAX_ID) is None or not _optional_text(item, "clientState"):
            dropped["malformed"] += 1
        else:
            typed.append(item)
    ids = sorted({i["subscriptionId"] for i in typed})
    secrets = await ingest.client_states.get_many(ids) if ids else {}
    kept = []
    for item in typed:
        expected = secrets.get(item["subscriptionId"])
        if expected is None:
            dropped["unknown_subscription"] += 1
        elif not matches(expected, item.get("clientState")):
            dropped["bad_client_state"] += 1
        elif str(item.get("tenantId", "")).lower() != ingest.tenant_id:
            dropped["wrong_tenant"] += 1
        else:
            kept.append(item)
    return kept


def _optional_text(item: dict[str, Any], name: str, limit: int = MAX_ID) -> bool:
    return item.get(name) is None or clean_text(item[name], limit) is not None


async def _guarded(endpoint: str, request: Request, handler: Any) -> Response:
    """The last resort: whatever the checks above did not foresee is counted and answered 400, never 500."""
    try:
        response: Response = await handler(request)
        return response
    except ClientDisconnect:
        return _plain(400, "client went away")
    except Exception:
        log.warning("%s: unexpected error, answering 400", endpoint, exc_info=True)
        metrics.NOTIFICATION_ITEMS.labels("internal_error").inc()
        with contextlib.suppress(RedisError, OSError):
            await request.app.state.ingest.redis.hincrby(keys.DROPPED_COUNTS, "internal_error", 1)
        return _plain(400, "bad request")


async def notifications(request: Request) -> Response:
    started = time.perf_counter()
    response = await _guarded("notifications", request, _notifications)
    metrics.NOTIFICATION_ACK_SECONDS.labels("notifications", str(response.status_code)).observe(
        time.perf_counter() - started
    )
    return response


async def _notifications(request: Request) -> Response:
    ingest: Ingest = request.app.state.ingest
    parsed = await _handshake_or_items(request, ingest)
    if isinstance(parsed, Response):
        return parsed
    items, payload = parsed
    received_at = time.time()
    dropped: Counter[str] = Counter()
    try:
        changes = await _decode(items, payload.get("validationTokens"), ingest, dropped, received_at)
        if changes:
            # Side by side: the request waits for one round trip, not two.
            await asyncio.gather(
                append_presence_batch(ingest.redis, ingest.partitions, changes, ingest.stream_maxlen),
                note_notifications(ingest.redis, changes, received_at),
            )
            metrics.NOTIFICATION_ITEMS.labels("accepted").inc(len(changes))
        await _count(ingest.redis, dropped)
    except (RedisError, OSError) as exc:
        log.warning("notifications: answering 503, storage unavailable: %s", type(exc).__name__)
        return _plain(503, "temporarily unavailable")
    except (KeysUnavailable, Unavailable) as exc:
        log.warning("notifications: answering 503: %s", exc)
        return _plain(503, "temporarily unavailable")
    return Response(status_code=202)


async def _decode(
    items: list[dict[str, Any]],
    tokens: Any,
    ingest: Ingest,
    dropped: Counter[str],
    received_at: float,
) -> list[PresenceChange]:
    candidates = await _authentic(items, ingest, dropped)
    if not candidates:
        return []
    token_problem = _verify_tokens(tokens, ingest.verifier)
    changes: list[PresenceChange] = []
    for item in candidates:
        encrypted = item.get("encryptedContent")
        if not isinstance(encrypted, dict):
            # We only ever subscribe with includeResourceData, so a basic notification is not ours.
            dropped["no_encrypted_content"] += 1
            continue
        if token_problem is not None:
            dropped[token_problem] += 1
            continue
        try:
            change = await _decrypt(item, encrypted, ingest, received_at)
        except ContentError as exc:
            dropped[exc.reason] += 1
            continue
        except PresenceFormatError:
            dropped["bad_resource"] += 1
            continue
        changes.append(change)
    return changes


def _verify_tokens(tokens: Any, verifier: TokenVerifier) -> str | None:
    """None when every token is good; else the reason to drop the batch's encrypted items."""
    if not isinstance(tokens, list) or not tokens:
        return "missing_validation_tokens"
    if not all(clean_text(token, MAX_TOKEN) is not None for token in tokens):
        return "bad_token"
    try:
        for token in tokens:
            verifier.verify(token)
    except TokenRejected as exc:
        return exc.reason
    return None


async def _decrypt(
    item: dict[str, Any], encrypted: dict[str, Any], ingest: Ingest, received_at: float
) -> PresenceChange:
    certificate_id = clean_text(encrypted.get("encryptionCertificateId"), MAX_ID)
    if certificate_id is None:
        raise ContentError("malformed", "no encryptionCertificateId")
    try:
        certificate = await ingest.certificates.get(certificate_id)
    except SealError as exc:
        raise Unavailable(str(exc)) from None
    if certificate is None:
        raise ContentError("unknown_certificate")
    plaintext = decrypt_content(encrypted, certificate.private_key)
    try:
        resource = loads_bounded(plaintext)
    except BadJson:
        raise ContentError("malformed", "decrypted data is not UTF-8 JSON") from None
    if not isinstance(resource, dict):
        raise ContentError("malformed", "decrypted data is not an object")
    resource_data = item.get("resourceData")
    fallback = resource_data.get("id") if isinstance(resource_data, dict) else None
    return PresenceChange.from_resource(
        resource,
        subscription_id=str(item["subscriptionId"]),
        tenant_id=str(item.get("tenantId", "")),
        received_at=received_at,
        fallback_user_id=clean_text(fallback, MAX_ID),
    )


async def lifecycle(request: Request) -> Response:
    return await _guarded("lifecycle", request, _lifecycle)


async def _lifecycle(request: Request) -> Response:
    ingest: Ingest = request.app.state.ingest
    parsed = await _handshake_or_items(request, ingest)
    if isinstance(parsed, Response):
        return parsed
    items, _ = parsed
    dropped: Counter[str] = Counter()
    received_at = time.time()
    try:
        events = []
        for item in await _authentic(items, ingest, dropped):
            if (
                not isinstance(item.get("lifecycleEvent"), str)
                or item["lifecycleEvent"] not in LIFECYCLE_EVENTS
            ):
                dropped["unknown_lifecycle_event"] += 1
                continue
            if not _optional_text(item, "tenantId") or not _optional_text(
                item, "subscriptionExpirationDateTime"
            ):
                dropped["malformed"] += 1
                continue
            event = {k: item.get(k) for k in ("subscriptionId", "lifecycleEvent", "tenantId")}
            event["subscriptionExpirationDateTime"] = item.get("subscriptionExpirationDateTime")
            event["received_at"] = received_at
            events.append(event)
        if events:
            await append_lifecycle_batch(ingest.redis, events, ingest.stream_maxlen)
        await _count(ingest.redis, dropped)
    except (RedisError, OSError) as exc:
        log.warning("lifecycle: answering 503, storage unavailable: %s", type(exc).__name__)
        return _plain(503, "temporarily unavailable")
    return Response(status_code=202)


def routes() -> list[Route]:
    return [
        Route("/graph/notifications", notifications, methods=["POST"]),
        Route("/graph/lifecycle", lifecycle, methods=["POST"]),
    ]
