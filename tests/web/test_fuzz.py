"""Fuzzing the public endpoints through the real app, real HTTP and a real Valkey.

Whatever arrives, the answer is never 5xx, no traceback is logged, nothing is queued that no signed,
encrypted item from a known subscription carried, and memory stays bounded.  The CI profile runs a
few thousand examples; ``--hypothesis-profile=long`` runs for hours.
"""

from __future__ import annotations

import json
import logging
import resource
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette

from service.core import keys
from service.starface import callback_tokens, xmlrpc
from service.web import starface_callback as callback
from tests.fixtures.webhook import Bridge

# The CI example count per test; the ``long`` profile's count wins when it is chosen.
_EXAMPLES = 1000 if settings().max_examples <= 100 else settings().max_examples
# One bridge serves every example: it keeps no per-request state beyond the counters, which is the point.
_FUZZ = settings(
    max_examples=_EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)

surrogates = st.characters(categories=["Cs"])
hostile_text = st.one_of(
    st.text(max_size=20),
    st.text(st.one_of(surrogates, st.just("\x00"), st.characters()), max_size=20),
    st.integers(min_value=1, max_value=5000).map(lambda n: "x" * n),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**30, max_value=10**300),
    st.floats(allow_nan=False, allow_infinity=False),
    hostile_text,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(hostile_text, inner, max_size=4),
    max_leaves=12,
)
SUBSCRIPTION = "sub-fuzz"
# The whole test process, pytest and Valkey client included; a parser that buffered a bomb would pass it.
MAX_RSS_MIB = 1500


def _field(*known: Any) -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(known), json_values) if known else json_values


items = st.fixed_dictionaries(
    {},
    optional={
        "subscriptionId": _field(SUBSCRIPTION, ["a"], {"id": 1}),
        "clientState": _field("state"),
        "tenantId": _field("11111111-2222-3333-4444-555555555555"),
        "lifecycleEvent": _field("missed", "reauthorizationRequired", "subscriptionRemoved"),
        "subscriptionExpirationDateTime": json_values,
        "resourceData": json_values,
        "encryptedContent": st.one_of(
            json_values,
            st.fixed_dictionaries(
                {},
                optional={
                    k: json_values for k in ("data", "dataKey", "dataSignature", "encryptionCertificateId")
                },
            ),
        ),
    },
)
payloads = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"value": st.one_of(st.lists(st.one_of(items, json_values), max_size=6), json_values)},
        optional={"validationTokens": st.one_of(json_values, st.lists(hostile_text, max_size=3))},
    ),
)


def _deep(depth: int, opener: bytes) -> bytes:
    if opener == b"[":
        return b"[" * depth + b"]" * depth
    return b'{"value": [' + b'{"a":' * depth + b"1" + b"}" * depth + b"]}"


graph_bodies = st.one_of(
    payloads.map(lambda p: json.dumps(p).encode()),
    st.binary(max_size=200),
    st.tuples(st.integers(min_value=65, max_value=100_000), st.sampled_from([b"[", b"{"])).map(
        lambda t: _deep(*t)
    ),
    st.integers(min_value=1, max_value=200_000).map(lambda n: b'{"value": [' + b"{}," * n + b"{}]}"),
)


@pytest.fixture
def tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[list[logging.LogRecord]]:
    caplog.set_level(logging.INFO)
    # uvicorn's default config stops its loggers from propagating; its "Exception in ASGI
    # application" tracebacks must be seen here too.
    uvicorn_error = logging.getLogger("uvicorn.error")
    uvicorn_error.addHandler(caplog.handler)
    yield caplog.records
    uvicorn_error.removeHandler(caplog.handler)


def _traced(records: list[logging.LogRecord]) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in records if r.exc_info]


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("path", ["/graph/notifications", "/graph/lifecycle"])
@_FUZZ
@given(body=graph_bodies, chunked=st.booleans())
async def test_graph_endpoints_never_answer_5xx(
    bridge: Bridge, path: str, tracebacks: list[logging.LogRecord], body: bytes, chunked: bool
) -> None:
    await bridge.subscription(SUBSCRIPTION)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    content: Any = chunks() if chunked else body
    response = await bridge.http.post(path, content=content, headers={"content-type": "application/json"})
    assert response.status_code < 500, body[:300]
    assert not _traced(tracebacks)
    assert await bridge.queued() == 0
    assert await bridge.redis.xlen(keys.LIFECYCLE_STREAM) == 0
    assert _rss_mib() < MAX_RSS_MIB


async def test_ten_megabyte_bodies_are_413_with_and_without_content_length(bridge: Bridge) -> None:
    big = b'{"value": [' + b" " * (10 * 1024 * 1024) + b"]}"

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    for content in (big, chunks()):
        response = await bridge.http.post("/graph/notifications", content=content)
        assert response.status_code == 413
    assert await bridge.queued() == 0


BILLION_LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(
        b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
        for i in range(1, 10)
    )
    + b"]><methodCall><methodName>&lol9;</methodName></methodCall>"
)
XXE = (
    b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    b"<methodCall><methodName>&x;</methodName></methodCall>"
)
CALL_STATE = "ucp.v30.events.call.receiveCallState"

xml_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**30, max_value=10**600),
    st.floats(allow_nan=False),
    st.text(st.characters(blacklist_categories=["Cs", "Cc"]), max_size=30),
    st.integers(min_value=1, max_value=5000).map(lambda n: "9" * n),
)
xml_values = st.recursive(
    xml_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
call_structs = st.fixed_dictionaries(
    {},
    optional={
        k: xml_values
        for k in ("id", "state", "timestamp", "callerNumber", "callerName", "calledNumber", "groupID")
    },
)
callback_bodies = st.one_of(
    st.tuples(
        st.sampled_from([CALL_STATE, "ucp.v22.events.call.receiveCallState", "x.y"]),
        st.lists(st.one_of(call_structs, xml_values), max_size=2),
    ).map(lambda t: xmlrpc.dumps_call(t[0], t[1])),
    st.binary(max_size=300),
    st.sampled_from(["UTF-7", "x-nope", "ISO-8859-1", "utf-16", "UTF-32", "ascii", ""]).map(
        lambda e: (
            f'<?xml version="1.0" encoding="{e}"?><methodCall><methodName>{CALL_STATE}</methodName>'
            "</methodCall>"
        ).encode()
    ),
    st.sampled_from([BILLION_LAUGHS, XXE]),
    st.integers(min_value=33, max_value=20_000).map(
        lambda n: b"<methodCall>" + b"<a>" * n + b"</a>" * n + b"</methodCall>"
    ),
    st.sampled_from(
        [
            '<?xml version="1.0"?>',
            '<methodCall xmlns:ex="http://ws.apache.org/xmlrpc/namespaces/extensions">',
        ]
    ).map(
        lambda head: (
            head + f"<methodName>{CALL_STATE}</methodName><params><param><value><struct>"
            "<member><name>id</name><value>c</value></member>"
            "<member><name>timestamp</name><value><ex:i8>" + "9" * 4000 + "</ex:i8></value></member>"
            "</struct></value></param></params></methodCall>"
        ).encode()
    ),
)


@pytest.fixture
async def callback_http(
    redis_url: str, make_settings: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, aioredis.Redis, str]]:
    app = Starlette(routes=callback.routes())
    app.state.redis = aioredis.Redis.from_url(redis_url)
    app.state.settings = make_settings()
    token = secrets.token_urlsafe(32)
    await callback_tokens.register_token(app.state.redis, token, "0001")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bridge") as http:
        yield http, app.state.redis, callback_tokens.callback_path(token)
    await app.state.redis.aclose()


@_FUZZ
@given(body=callback_bodies)
async def test_callback_endpoint_never_answers_5xx(
    callback_http: tuple[httpx.AsyncClient, aioredis.Redis, str],
    tracebacks: list[logging.LogRecord],
    body: bytes,
) -> None:
    http, redis, path = callback_http
    response = await http.post(path, content=body, headers={"content-type": "text/xml"})
    assert response.status_code < 500, body[:300]
    assert b"root:" not in response.content
    assert b"lollol" not in response.content
    assert not _traced(tracebacks)
    assert _rss_mib() < MAX_RSS_MIB
    # Only events with a usable id ever reach the stream; each entry reads back as a call event.
    entries: Any = await redis.xrange(keys.call_stream(0), count=1000)
    for _, fields in entries:
        raw = json.loads(fields[b"call"])
        assert isinstance(raw["call_id"], str)
        assert raw["call_id"]
        assert raw["time"] is None or abs(raw["time"]) < 2.6e11
