"""The UCI callback endpoint over real HTTP (uvicorn on loopback) into real Valkey."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from starlette.applications import Starlette

from service.core import keys
from service.core.embedded import free_port
from service.core.settings import Settings
from service.starface import callback_tokens, xmlrpc
from service.starface.calls import CallEvent
from service.web import starface_callback as callback
from service.web.server import AppServer


@contextlib.asynccontextmanager
async def serve_callbacks(redis_url: str, settings: Settings) -> AsyncIterator[str]:
    """A tiny app with the callback routes and the state the lead's app provides; yields its URL."""
    app = Starlette(routes=callback.routes())
    app.state.redis = aioredis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=1)
    app.state.settings = settings
    server = AppServer(app, lifespan="off")
    try:
        await server.start()
        yield server.url
    finally:
        await server.stop()
        await app.state.redis.aclose()


TOKEN = secrets.token_urlsafe(32)
LOGIN = "0001"


@pytest.fixture
async def base(redis_url: str, make_settings: Callable[..., Settings]) -> AsyncIterator[str]:
    async with serve_callbacks(redis_url, make_settings()) as url:
        yield url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


@pytest.fixture
async def registered(redis_client: aioredis.Redis) -> str:
    await callback_tokens.register_token(redis_client, TOKEN, LOGIN)
    return TOKEN


async def post(
    http: aiohttp.ClientSession, url: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    async with http.post(url, data=body, headers=headers or {"Content-Type": "text/xml"}) as response:
        return response.status, await response.read()


def call_state(call_id: str, state: str, full: bool = True, ns: str = "v30") -> bytes:
    struct = {
        "id": call_id,
        "state": state,
        "timestamp": 1763800000123,
        "callerNumber": "+4971112345678" if full else "",
        "callerName": "Erika Mustermann" if full else "",
        "calledNumber": "0001" if full else "",
        "calledName": "Anna Alpha" if full else "",
        "groupID": "",
    }
    return xmlrpc.dumps_call(f"ucp.{ns}.events.call.receiveCallState", [struct])


async def stream(redis_client: aioredis.Redis) -> list[CallEvent]:
    entries: Any = await redis_client.xrange(keys.call_stream(0))
    return [CallEvent.from_fields({k.decode(): v.decode() for k, v in f.items()}) for _, f in entries]


def endpoint(base: str, token: str = TOKEN) -> str:
    return f"{base}{callback_tokens.callback_path(token)}?de.vertico.starface.user={LOGIN}"


SEQUENCES = {
    "incoming answered": ["", "RINGING", "CONNECTED", "HANGUP"],
    "incoming missed": ["RINGING", "RINGING", "HANGUP"],
    "outgoing answered": ["PROCEEDING", "PROCEEDING", "CONNECTED", "HANGUP"],
    "outgoing unanswered": ["PROCEEDING", "HANGUP"],
}


@pytest.mark.parametrize("sequence", SEQUENCES.values(), ids=list(SEQUENCES))
async def test_every_call_sequence_is_answered_and_queued_in_order(
    base: str, http: aiohttp.ClientSession, registered: str, redis_client: aioredis.Redis, sequence: list[str]
) -> None:
    call_id = secrets.token_hex(8)
    for index, state in enumerate(sequence):
        status, body = await post(http, endpoint(base), call_state(call_id, state, full=index > 0))
        assert status == 200
        assert xmlrpc.parse_response(body) is True
    events = await stream(redis_client)
    assert [e.state for e in events] == sequence
    assert {e.login for e in events} == {LOGIN}
    assert {e.call_id for e in events} == {call_id}
    assert events[0].caller_number == ""  # early events carry no details
    assert events[-1].caller_number == "+4971112345678"
    assert all(e.time == pytest.approx(1763800000.123) for e in events)
    assert all(e.received_at > 0 for e in events)


async def test_v22_namespace_is_accepted_too(
    base: str, http: aiohttp.ClientSession, registered: str, redis_client: aioredis.Redis
) -> None:
    status, _ = await post(http, endpoint(base), call_state("c22", "RINGING", ns="v22"))
    assert status == 200
    assert [e.call_id for e in await stream(redis_client)] == ["c22"]


@pytest.mark.parametrize(
    "method",
    ["ucp.v30.events.call.callChangesIdEvent", "ucp.v30.events.call.newMessageWaitingIndicationEvent"],
)
async def test_other_methods_are_answered_politely_and_ignored(
    base: str, http: aiohttp.ClientSession, registered: str, redis_client: aioredis.Redis, method: str
) -> None:
    status, body = await post(http, endpoint(base), xmlrpc.dumps_call(method, [{"id": "x"}]))
    assert status == 200
    assert xmlrpc.parse_response(body) is True
    assert await redis_client.xlen(keys.call_stream(0)) == 0


@pytest.mark.parametrize(
    "token", [secrets.token_urlsafe(32), "short", "a" * 300, "dots.are.not.in.our.tokens.x"]
)
async def test_unknown_token_is_a_bare_404(
    base: str, http: aiohttp.ClientSession, registered: str, redis_client: aioredis.Redis, token: str
) -> None:
    status, body = await post(http, endpoint(base, token), call_state("c", "RINGING"))
    assert status == 404
    assert body == b""
    assert await redis_client.xlen(keys.call_stream(0)) == 0


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<methodCall><methodName>ucp.v30.events.call.receiveCallState</methodName>
<params><param><value><struct><member><name>id</name><value>&lol4;</value></member></struct></value></param>
</params></methodCall>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE m [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<methodCall><methodName>ucp.v30.events.call.receiveCallState</methodName>
<params><param><value><struct><member><name>id</name><value>&xxe;</value></member></struct></value></param>
</params></methodCall>"""

GARBAGE = {
    "xml bomb": BILLION_LAUGHS,
    "external entity": EXTERNAL_ENTITY,
    "bare dtd": b'<?xml version="1.0"?><!DOCTYPE methodCall>'
    b"<methodCall><methodName>x</methodName></methodCall>",
    "not xml": b"\x00\xff garbage {json: 1}",
    "empty": b"",
    "truncated": call_state("c", "RINGING")[:-30],
    "wrong root": b"<methodResponse><params/></methodResponse>",
    "utf-7": b'<?xml version="1.0" encoding="UTF-7"?><methodCall><methodName>x</methodName></methodCall>',
    "unknown encoding": b'<?xml version="1.0" encoding="x-nope"?>'
    b"<methodCall><methodName>x</methodName></methodCall>",
}

UNUSABLE = {
    "no struct": xmlrpc.dumps_call("ucp.v30.events.call.receiveCallState", ["RINGING"]),
    "no params": xmlrpc.dumps_call("ucp.v30.events.call.receiveCallState", []),
    "struct without id": xmlrpc.dumps_call("ucp.v30.events.call.receiveCallState", [{"state": "RINGING"}]),
}


@pytest.mark.parametrize("body", UNUSABLE.values(), ids=list(UNUSABLE))
async def test_a_call_event_the_bridge_cannot_use_is_acknowledged_counted_and_not_queued(
    base: str, http: aiohttp.ClientSession, registered: str, redis_client: aioredis.Redis, body: bytes
) -> None:
    status, answer = await post(http, endpoint(base), body)
    assert status == 200
    assert xmlrpc.parse_response(answer) is True
    assert await redis_client.xlen(keys.call_stream(0)) == 0
    assert await redis_client.hget(keys.UCI_CALLBACK_REFUSED, "bad_call_state") == b"1"


@pytest.mark.parametrize("timestamp", [10**30, "9" * 5000, "", None, 1.5e308])
async def test_a_huge_or_missing_timestamp_queues_the_event_without_a_time(
    base: str, http: aiohttp.ClientSession, registered: str, redis_client: aioredis.Redis, timestamp: Any
) -> None:
    struct: dict[str, Any] = {"id": "c1", "state": "RINGING"}
    if timestamp is not None:
        struct["timestamp"] = timestamp
    status, _ = await post(
        http, endpoint(base), xmlrpc.dumps_call("ucp.v30.events.call.receiveCallState", [struct])
    )
    assert status == 200
    events = await stream(redis_client)
    assert [(e.call_id, e.state, e.time) for e in events] == [("c1", "RINGING", None)]


async def test_java_extension_types_in_a_call_event_are_read(
    base: str, http: aiohttp.ClientSession, registered: str, redis_client: aioredis.Redis
) -> None:
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?>'
        b'<methodCall xmlns:ex="http://ws.apache.org/xmlrpc/namespaces/extensions">'
        b"<methodName>ucp.v30.events.call.receiveCallState</methodName><params><param><value><struct>"
        b"<member><name>id</name><value>c2</value></member>"
        b"<member><name>state</name><value><string>CONNECTED</string></value></member>"
        b"<member><name>timestamp</name><value><ex:i8>1763800000123</ex:i8></value></member>"
        b"<member><name>callerName</name><value><ex:nil/></value></member>"
        b"<member><name>groupID</name><value><nil/></value></member>"
        b"</struct></value></param></params></methodCall>"
    )
    status, _ = await post(http, endpoint(base), body)
    assert status == 200
    (event,) = await stream(redis_client)
    assert (event.call_id, event.state, event.caller_name) == ("c2", "CONNECTED", "")
    assert event.time == pytest.approx(1763800000.123)


@pytest.mark.parametrize("body", GARBAGE.values(), ids=list(GARBAGE))
async def test_hostile_or_malformed_bodies_are_refused_and_nothing_is_queued(
    base: str, http: aiohttp.ClientSession, registered: str, redis_client: aioredis.Redis, body: bytes
) -> None:
    status, answer = await post(http, endpoint(base), body)
    assert status == 400
    with pytest.raises(xmlrpc.Fault):
        xmlrpc.parse_response(answer)
    assert b"Traceback" not in answer
    assert b"passwd" not in answer
    assert b"lollol" not in answer
    assert await redis_client.xlen(keys.call_stream(0)) == 0
    # The server is fine afterwards.
    status, _ = await post(http, endpoint(base), call_state("after", "RINGING"))
    assert status == 200
    assert await redis_client.xlen(keys.call_stream(0)) == 1
    refused = await redis_client.hgetall(keys.UCI_CALLBACK_REFUSED)
    assert sum(int(v) for v in refused.values()) == 1


def _oversized() -> bytes:
    padding = "x" * (callback.MAX_BODY_BYTES + 1)
    return xmlrpc.dumps_call("ucp.v30.events.call.receiveCallState", [{"id": "big", "calledName": padding}])


async def test_oversized_body_is_refused_with_content_length(
    base: str, http: aiohttp.ClientSession, registered: str, redis_client: aioredis.Redis
) -> None:
    status, _ = await post(http, endpoint(base), _oversized())
    assert status == 413
    assert await redis_client.xlen(keys.call_stream(0)) == 0


async def test_oversized_chunked_body_is_refused_while_streaming(
    base: str, http: aiohttp.ClientSession, registered: str, redis_client: aioredis.Redis
) -> None:
    data = _oversized()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 4096):
            yield data[start : start + 4096]

    try:
        status, _ = await post(http, endpoint(base), chunks())
    except aiohttp.ClientError:
        status = 413  # the server may close the connection before reading the rest
    assert status == 413
    assert await redis_client.xlen(keys.call_stream(0)) == 0
    status, _ = await post(http, endpoint(base), call_state("after", "RINGING"))
    assert status == 200


async def test_a_body_exactly_at_the_limit_is_read(
    base: str, http: aiohttp.ClientSession, registered: str, redis_client: aioredis.Redis
) -> None:
    head = xmlrpc.dumps_call("ucp.v30.events.call.receiveCallState", [{"id": "edge", "calledName": ""}])
    fill = callback.MAX_BODY_BYTES - len(head)
    body = xmlrpc.dumps_call(
        "ucp.v30.events.call.receiveCallState", [{"id": "edge", "calledName": "y" * fill}]
    )
    assert len(body) == callback.MAX_BODY_BYTES
    status, _ = await post(http, endpoint(base), body)
    assert status == 200
    assert [e.call_id for e in await stream(redis_client)] == ["edge"]


async def test_get_is_not_allowed(base: str, http: aiohttp.ClientSession, registered: str) -> None:
    async with http.get(endpoint(base)) as response:
        assert response.status == 405


async def test_redis_down_answers_503_at_once(
    make_settings: Callable[..., Settings], http: aiohttp.ClientSession
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    async with serve_callbacks(dead, make_settings()) as url:
        started = asyncio.get_running_loop().time()
        status, _ = await post(http, endpoint(url), call_state("c", "RINGING"))
        assert status == 503
        assert asyncio.get_running_loop().time() - started < 3


async def test_redis_failing_between_lookup_and_append_answers_503(
    redis_url: str, make_settings: Callable[..., Settings], http: aiohttp.ClientSession
) -> None:
    async with serve_callbacks(redis_url, make_settings()) as url:
        client = aioredis.Redis.from_url(redis_url)
        try:
            await callback_tokens.register_token(client, TOKEN, LOGIN)
            # A stream key of the wrong type makes XADD fail while the token lookup works.
            await client.set(keys.call_stream(0), "not a stream")
            status, _ = await post(http, endpoint(url), call_state("c", "RINGING"))
            assert status == 503
        finally:
            await client.delete(keys.call_stream(0))
            await client.aclose()


def test_token_digest_is_not_the_token() -> None:
    digest = callback_tokens.token_digest(TOKEN)
    assert TOKEN not in digest
    assert len(digest) == 64


async def test_a_client_leaving_mid_body_leaves_no_traceback(
    base: str, registered: str, redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    uvicorn_error = logging.getLogger("uvicorn.error")
    uvicorn_error.addHandler(caplog.handler)
    try:
        host, port = base.removeprefix("http://").split(":")
        _reader, writer = await asyncio.open_connection(host, int(port))
        path = callback_tokens.callback_path(TOKEN)
        writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n<methodCall>".encode())
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(0.3)
    finally:
        uvicorn_error.removeHandler(caplog.handler)
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []
    assert await redis_client.xlen(keys.call_stream(0)) == 0


async def test_callbacks_are_counted_by_outcome_in_prometheus(
    base: str, http: aiohttp.ClientSession, registered: str
) -> None:
    from prometheus_client import REGISTRY

    def count(outcome: str) -> float:
        labels = {"outcome": outcome}
        return REGISTRY.get_sample_value("presence_bridge_starface_callbacks_total", labels) or 0

    before = {o: count(o) for o in ("accepted", "ignored", "unknown_token", "bad_call_state")}
    assert (await post(http, endpoint(base), call_state("m1", "RINGING")))[0] == 200
    other = xmlrpc.dumps_call("ucp.v30.events.call.callChangesIdEvent", [{"id": "x"}])
    assert (await post(http, endpoint(base), other))[0] == 200
    unknown = endpoint(base, secrets.token_urlsafe(32))
    assert (await post(http, unknown, call_state("m2", "RINGING")))[0] == 404
    assert (await post(http, endpoint(base), UNUSABLE["no struct"]))[0] == 200
    assert {o: count(o) - n for o, n in before.items()} == dict.fromkeys(before, 1)
