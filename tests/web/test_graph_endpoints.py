"""The public Graph endpoints over real HTTP, with a real Valkey behind them."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from service.core import keys
from service.core.embedded import EmbeddedValkey
from service.graph.presence import PresenceChange
from tests.fixtures.webhook import Bridge, GraphSigner, JwksServer, stream_entries

USER = "7c2f1a40-0000-4000-8000-000000000001"


@pytest.mark.parametrize("path", ["/graph/notifications", "/graph/lifecycle"])
async def test_validation_handshake_echoes_the_decoded_token(bridge: Bridge, path: str) -> None:
    token = "Validation: Testing client application reachability for subscription Request-Id: 1+2=3 <&>"
    response = await bridge.http.post(
        path, params={"validationToken": token}, headers={"content-type": "text/plain; charset=utf-8"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.text == token


@pytest.mark.parametrize("token", ["", "x" * 4097])
async def test_validation_token_empty_or_too_long_is_refused(bridge: Bridge, token: str) -> None:
    response = await bridge.http.post("/graph/notifications", params={"validationToken": token})
    assert response.status_code == 400


async def test_round_trip_to_the_stream(bridge: Bridge) -> None:
    sub = await bridge.subscription()
    item = bridge.notifications.item(
        sub, bridge.certificate, USER, "Busy", "InACall", sequence="00000000000000000042"
    )
    response = await bridge.post(bridge.notifications.body([item]))
    assert response.status_code == 202
    assert response.content == b""
    entries = await stream_entries(bridge.redis, keys.presence_stream(0))
    assert len(entries) == 1
    change = PresenceChange.from_fields(entries[0][1])
    assert (change.user_id, change.availability, change.activity) == (USER, "Busy", "InACall")
    assert change.sequence == "00000000000000000042"
    assert change.subscription_id == sub.id
    assert change.tenant_id == bridge.notifications.tenant_id
    assert abs(change.received_at - time.time()) < 60


async def test_v1_tokens_are_accepted_too(bridge: Bridge) -> None:
    sub = await bridge.subscription()
    item = bridge.notifications.item(sub, bridge.certificate, USER)
    body = bridge.notifications.body([item], tokens=[bridge.notifications.signer.token("1.0")])
    assert (await bridge.post(body)).status_code == 202
    assert await bridge.queued() == 1


async def test_status_message_and_unknown_strings_pass_through(bridge: Bridge) -> None:
    sub = await bridge.subscription()
    resource = {
        "id": USER,
        "availability": "Focusing",
        "activity": "DeepWork",
        "sequenceNumber": "7",
        "statusMessage": {"message": {"content": "Back at 3", "contentType": "text"}},
    }
    item = bridge.notifications.item(sub, bridge.certificate, USER, resource=resource)
    assert (await bridge.post(bridge.notifications.body([item]))).status_code == 202
    entry = (await stream_entries(bridge.redis, keys.presence_stream(0)))[0][1]
    change = PresenceChange.from_fields(entry)
    assert (change.availability, change.activity, change.status_message) == (
        "Focusing",
        "DeepWork",
        "Back at 3",
    )


async def test_the_tenant_id_is_compared_without_regard_to_case(bridge: Bridge) -> None:
    sub = await bridge.subscription()
    item = bridge.notifications.item(sub, bridge.certificate, "user-1")
    shouted = dict(item, tenantId=str(item["tenantId"]).upper())
    assert (await bridge.post(bridge.notifications.body([shouted]))).status_code == 202
    assert await bridge.queued() == 1


async def test_batch_keeps_good_items_and_drops_bad_ones(bridge: Bridge) -> None:
    sub = await bridge.subscription()
    good = [bridge.notifications.item(sub, bridge.certificate, f"user-{i}") for i in range(3)]
    wrong_state = dict(good[0], clientState="guess")
    unknown = dict(good[1], subscriptionId="not-ours")
    tampered = json.loads(json.dumps(good[2]))
    tampered["encryptedContent"]["dataSignature"] = good[0]["encryptedContent"]["dataSignature"]
    other_tenant = dict(good[0], tenantId="99999999-0000-0000-0000-000000000000")
    body = bridge.notifications.body([wrong_state, *good, unknown, tampered, other_tenant])
    assert (await bridge.post(body)).status_code == 202
    assert await bridge.queued() == 3
    assert await bridge.dropped() == {
        "bad_client_state": 1,
        "unknown_subscription": 1,
        "bad_signature": 1,
        "wrong_tenant": 1,
    }


async def test_bodies_up_to_4_mib_are_taken_and_larger_ones_are_413(bridge: Bridge) -> None:
    sub = await bridge.subscription()
    item = bridge.notifications.item(sub, bridge.certificate, "user-1")
    padded = json.dumps(bridge.notifications.body([item])).encode()
    padded = padded[:-1] + b" " * (3 * 1024 * 1024) + b"}"  # 3 MiB: a large batch from Graph
    assert (await bridge.http.post("/graph/notifications", content=padded)).status_code == 202
    big = b'{"value": [' + b" " * (4 * 1024 * 1024) + b"]}"
    response = await bridge.http.post("/graph/notifications", content=big)
    assert response.status_code == 413

    async def chunks() -> Any:  # no Content-Length: the bound holds while streaming
        for _ in range(140):
            yield b" " * 32768

    response = await bridge.http.post("/graph/notifications", content=chunks())
    assert response.status_code == 413
    assert await bridge.queued() == 1  # the 3 MiB batch only


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[]", "'value' array"),
        (b'{"value": {}}', "'value' array"),
        (b'{"value": [1]}', "must be an object"),
    ],
)
async def test_malformed_bodies_are_400_with_a_reason(bridge: Bridge, body: bytes, reason: str) -> None:
    response = await bridge.http.post("/graph/notifications", content=body)
    assert response.status_code == 400
    assert reason in response.text
    assert "Traceback" not in response.text


async def test_lifecycle_events_queue_after_the_client_state_check(bridge: Bridge) -> None:
    sub = await bridge.subscription()
    base = {
        "subscriptionId": sub.id,
        "clientState": sub.client_state,
        "tenantId": bridge.notifications.tenant_id,
        "subscriptionExpirationDateTime": "2026-11-22T19:00:00Z",
    }
    body = {
        "value": [
            dict(base, lifecycleEvent="reauthorizationRequired"),
            dict(base, lifecycleEvent="missed"),
            dict(base, lifecycleEvent="reauthorizationRequired", clientState="wrong"),
            dict(base, lifecycleEvent="somethingElse"),
        ]
    }
    assert (await bridge.post(body, "/graph/lifecycle")).status_code == 202
    entries = await stream_entries(bridge.redis, keys.LIFECYCLE_STREAM)
    events = [json.loads(fields["event"]) for _, fields in entries]
    assert [e["lifecycleEvent"] for e in events] == ["reauthorizationRequired", "missed"]
    assert events[0]["subscriptionId"] == sub.id
    assert await bridge.dropped() == {"bad_client_state": 1, "unknown_lifecycle_event": 1}


async def test_healthz_and_readyz(bridge: Bridge) -> None:
    assert (await bridge.http.get("/healthz")).json() == {"status": "ok"}
    assert (await bridge.http.get("/readyz")).json() == {"status": "ready"}


async def test_redis_down_answers_503_fast_then_recovers(
    bridge_factory: Callable[..., Any], tmp_path: Path
) -> None:
    own = EmbeddedValkey(tmp_path / "valkey", appendonly=True)
    own.start()
    try:
        bridge: Bridge = await bridge_factory(redis_url=own.url)
        sub = await bridge.subscription()
        item = bridge.notifications.item(sub, bridge.certificate, USER)
        own.stop(kill=True)
        started = time.monotonic()
        response = await bridge.post(bridge.notifications.body([item]))
        assert response.status_code == 503
        assert time.monotonic() - started < 2.0
        assert (await bridge.http.get("/readyz")).status_code == 503
        own.start()  # same port, same append-only file: the clientState survived
        response = await bridge.post(bridge.notifications.body([item]))
        assert response.status_code == 202
        assert await bridge.queued() == 1
    finally:
        own.stop()


async def test_signing_keys_unobtainable_then_accepted_on_retry(
    bridge_factory: Callable[..., Any], jwks_server: JwksServer
) -> None:
    jwks_server.failing = True
    bridge: Bridge = await bridge_factory()
    bridge.app.state.signing_keys.retry_seconds = 0.05
    sub = await bridge.subscription()
    body = bridge.notifications.body([bridge.notifications.item(sub, bridge.certificate, USER)])
    started = time.monotonic()
    assert (await bridge.post(body)).status_code == 503
    assert time.monotonic() - started < 2.0
    assert await bridge.queued() == 0
    jwks_server.failing = False
    # Graph retries with backoff; the keys come back through the background refresh meanwhile.
    for _ in range(200):
        response = await bridge.post(body)
        if response.status_code == 202:
            break
        assert response.status_code == 503
        await asyncio.sleep(0.02)
    assert response.status_code == 202
    assert await bridge.queued() == 1


async def test_unknown_kid_with_fresh_keys_is_a_bad_token_without_refetch(
    bridge: Bridge, jwks_server: JwksServer
) -> None:
    sub = await bridge.subscription()
    fetches = jwks_server.fetches
    other = GraphSigner(kid="rotated-kid")
    body = bridge.notifications.body(
        [bridge.notifications.item(sub, bridge.certificate, USER)], tokens=[other.token()]
    )
    for _ in range(5):
        assert (await bridge.post(body)).status_code == 202
    assert jwks_server.fetches == fetches
    assert await bridge.dropped() == {"unknown_kid": 5}


def _token_variants(signer: GraphSigner) -> dict[str, str]:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    import jwt as pyjwt

    return {
        "expired_token": signer.token(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200),
        "wrong_audience": signer.token(aud="00000000-0000-0000-0000-000000000000"),
        "wrong_publisher": signer.token(azp="11111111-0000-0000-0000-000000000000"),
        "wrong_publisher_v1": signer.token("1.0", appid="11111111-0000-0000-0000-000000000000"),
        "wrong_issuer": signer.token(iss="https://login.microsoftonline.com/other-tenant/v2.0"),
        "bad_token_signature": signer.token(key=stranger),
        "bad_algorithm": pyjwt.encode(signer.claims(), key="", algorithm="none"),
        "malformed_token": "not.a.jwt",
    }


@pytest.mark.parametrize(
    "variant",
    [
        "expired_token",
        "wrong_audience",
        "wrong_publisher",
        "wrong_publisher_v1",
        "wrong_issuer",
        "bad_token_signature",
        "bad_algorithm",
        "malformed_token",
        "missing_validation_tokens",
    ],
)
async def test_bad_validation_tokens_queue_nothing(bridge: Bridge, variant: str) -> None:
    sub = await bridge.subscription()
    item = bridge.notifications.item(sub, bridge.certificate, USER)
    if variant == "missing_validation_tokens":
        tokens: list[str] = []
    else:
        # A good token next to a bad one does not rescue the batch: every token must verify.
        tokens = [bridge.notifications.signer.token(), _token_variants(bridge.notifications.signer)[variant]]
    response = await bridge.post(bridge.notifications.body([item], tokens=tokens))
    assert response.status_code == 202
    assert await bridge.queued() == 0
    expected = "wrong_publisher" if variant == "wrong_publisher_v1" else variant
    assert await bridge.dropped() == {expected: 1}


async def test_wrong_certificate_id_and_wrong_key(bridge: Bridge) -> None:
    from service.graph.certificates import generate

    sub = await bridge.subscription()
    unknown = bridge.notifications.item(sub, bridge.certificate, USER)
    unknown["encryptedContent"]["encryptionCertificateId"] = "nobody-knows-this-id"
    stranger = generate(bridge.certificate.id)  # right id, a key we do not hold
    wrong_key = bridge.notifications.item(sub, stranger, USER)
    response = await bridge.post(bridge.notifications.body([unknown, wrong_key]))
    assert response.status_code == 202
    assert await bridge.queued() == 0
    assert await bridge.dropped() == {"unknown_certificate": 1, "bad_key": 1}


async def test_item_without_encrypted_content_is_dropped(bridge: Bridge) -> None:
    sub = await bridge.subscription()
    item = bridge.notifications.item(sub, bridge.certificate, USER)
    del item["encryptedContent"]
    assert (await bridge.post(bridge.notifications.body([item]))).status_code == 202
    assert await bridge.dropped() == {"no_encrypted_content": 1}


async def test_requests_run_concurrently(bridge: Bridge) -> None:
    sub = await bridge.subscription()
    bodies = [
        bridge.notifications.body([bridge.notifications.item(sub, bridge.certificate, f"u{i}")])
        for i in range(16)  # WEB_MAX_IN_FLIGHT: more at once would be shed with 503
    ]
    responses = await asyncio.gather(*(bridge.post(b) for b in bodies))
    assert {r.status_code for r in responses} == {202}
    assert await bridge.queued() == 16


def test_http_client_reaches_the_real_socket(bridge: Bridge) -> None:
    # A guard that the fixture is a real server and not an in-process transport.
    assert isinstance(bridge.http._transport, httpx.AsyncHTTPTransport)


@pytest.mark.parametrize("field", ["data", "dataSignature", "dataKey"])
async def test_tampered_bytes_through_http_queue_nothing(bridge: Bridge, field: str) -> None:
    import base64

    sub = await bridge.subscription()
    items = []
    for where in (0, 0.5, -1):
        item = bridge.notifications.item(sub, bridge.certificate, USER)
        raw = bytearray(base64.b64decode(item["encryptedContent"][field]))
        raw[int(where * (len(raw) - 1)) if where != -1 else -1] ^= 0x80
        item["encryptedContent"][field] = base64.b64encode(bytes(raw)).decode()
        items.append(item)
    assert (await bridge.post(bridge.notifications.body(items))).status_code == 202
    assert await bridge.queued() == 0
    dropped = await bridge.dropped()
    assert sum(dropped.values()) == 3
    assert set(dropped) <= {"bad_signature", "bad_key"}


@pytest.mark.parametrize("path", ["/graph/notifications", "/graph/lifecycle"])
@pytest.mark.parametrize(
    "override",
    [
        {"subscriptionId": ["a", "b"]},
        {"subscriptionId": {"id": "x"}},
        {"subscriptionId": "sub-\ud800"},
        {"subscriptionId": "sub-\x00"},
        {"subscriptionId": "s" * 100_000},
        {"clientState": "\udfff"},
        {"clientState": {"nested": [1]}},
        {"lifecycleEvent": ["missed"], "tenantId": "\ud800"},
    ],
)
async def test_fields_of_the_wrong_type_or_unsafe_text_are_dropped_never_500(
    bridge: Bridge, path: str, override: dict[str, Any]
) -> None:
    sub = await bridge.subscription()
    item = {
        **bridge.notifications.item(sub, bridge.certificate, USER),
        "lifecycleEvent": "missed",
        **override,
    }
    response = await bridge.post(bridge.notifications.body([item]), path=path)
    assert response.status_code == 202
    assert await bridge.queued() == 0
    assert await bridge.redis.xlen(keys.LIFECYCLE_STREAM) == 0
    assert sum((await bridge.dropped()).values()) == 1


async def test_a_surrogate_in_the_certificate_id_is_dropped(bridge: Bridge) -> None:
    sub = await bridge.subscription()
    item = bridge.notifications.item(sub, bridge.certificate, USER)
    item["encryptedContent"]["encryptionCertificateId"] = "cert-\ud800"
    assert (await bridge.post(bridge.notifications.body([item]))).status_code == 202
    assert await bridge.dropped() == {"malformed": 1}


@pytest.mark.parametrize("path", ["/graph/notifications", "/graph/lifecycle"])
@pytest.mark.parametrize("depth", [65, 50_000, 100_000])
async def test_deeply_nested_json_is_refused_before_parsing(bridge: Bridge, path: str, depth: int) -> None:
    for body in (
        b"[" * depth + b"]" * depth,
        b'{"value": [' + b'{"a":' * depth + b"1" + b"}" * depth + b"]}",
    ):
        response = await bridge.http.post(path, content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400


async def test_a_deeply_nested_decrypted_payload_is_dropped(bridge: Bridge) -> None:
    sub = await bridge.subscription()
    nested: Any = "x"
    for _ in range(200):
        nested = [nested]
    resource = {"id": USER, "availability": "Busy", "activity": "InACall", "extra": nested}
    item = bridge.notifications.item(sub, bridge.certificate, USER, resource=resource)
    assert (await bridge.post(bridge.notifications.body([item]))).status_code == 202
    assert await bridge.queued() == 0
    assert await bridge.dropped() == {"malformed": 1}


@pytest.mark.parametrize(
    "resource",
    [
        {"id": USER, "availability": "Busy\ud800", "activity": "InACall"},
        {"id": USER + "\x00", "availability": "Busy", "activity": "InACall"},
        {"id": USER, "availability": "Busy", "activity": "InACall", "sequenceNumber": {"a": 1}},
        {"id": USER, "availability": "Busy", "activity": "InACall", "sequenceNumber": 10**60},
    ],
)
async def test_decrypted_fields_of_the_wrong_type_or_unsafe_text_are_dropped(
    bridge: Bridge, resource: dict[str, Any]
) -> None:
    sub = await bridge.subscription()
    item = bridge.notifications.item(sub, bridge.certificate, USER, resource=resource)
    assert (await bridge.post(bridge.notifications.body([item]))).status_code == 202
    assert await bridge.queued() == 0
    assert await bridge.dropped() == {"bad_resource": 1}


async def test_validation_tokens_of_the_wrong_type_drop_the_batch(bridge: Bridge) -> None:
    sub = await bridge.subscription()
    item = bridge.notifications.item(sub, bridge.certificate, USER)
    body = bridge.notifications.body([item], tokens=[{"a": 1}, ["x"]])  # type: ignore[list-item]
    assert (await bridge.post(body)).status_code == 202
    assert await bridge.dropped() == {"bad_token": 1}
