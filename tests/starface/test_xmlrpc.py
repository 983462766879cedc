from __future__ import annotations

import datetime as dt
import xmlrpc.client
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.starface.xmlrpc import (
    Fault,
    XmlRpcError,
    dumps_call,
    dumps_fault,
    dumps_response,
    parse_call,
    parse_response,
)

CALL_STATE = {
    "id": "5b0c3a9e-7f1e-4d55-9a43-0e6f0c2d9a11",
    "state": "RINGING",
    "timestamp": 1763800000123,
    "callerNumber": "",
    "callerName": "",
    "calledNumber": "0711 123",
    "calledName": "Müller & Söhne <Vertrieb>",
}


def test_call_round_trip_and_stdlib_agrees() -> None:
    body = dumps_call("ucp.v30.events.call.receiveCallState", [CALL_STATE])
    assert parse_call(body) == ("ucp.v30.events.call.receiveCallState", [CALL_STATE])
    params, method = xmlrpc.client.loads(body)
    assert method == "ucp.v30.events.call.receiveCallState"
    assert params == (CALL_STATE,)


def test_parses_what_the_stdlib_writes() -> None:
    values: list[Any] = [True, 7, 1.5, "x", None, [1, "a"], {"k": {"n": False}}, b"\x00\xff"]
    body = xmlrpc.client.dumps(tuple(values), methodname="m", allow_none=True)
    method, params = parse_call(body.encode())
    assert method == "m"
    assert params == values


def test_response_and_fault() -> None:
    assert parse_response(dumps_response(True)) is True
    stamp = dt.datetime(2026, 11, 22, 18, 0, 0)
    assert parse_response(dumps_response(stamp)) == stamp
    with pytest.raises(Fault) as caught:
        parse_response(dumps_fault(4, "not logged in"))
    assert (caught.value.code, caught.value.message) == (4, "not logged in")


def test_bare_value_is_a_string() -> None:
    body = b"<methodResponse><params><param><value>plain</value></param></params></methodResponse>"
    assert parse_response(body) == "plain"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>'
            b"<methodCall><methodName>&lol2;</methodName></methodCall>",
            "dtd",
        ),
        (b'<!DOCTYPE x SYSTEM "file:///etc/passwd"><methodCall/>', "dtd"),
        (b"<methodCall><methodName>x</methodName>", "malformed"),
        (b"not xml at all", "malformed"),
        (b"<methodResponse/>", "malformed"),
        (b"<methodCall><methodName></methodName></methodCall>", "malformed"),
        (
            b"<methodCall><methodName>m</methodName><params><param><value><int>x</int></value></param></params>"
            b"</methodCall>",
            "malformed",
        ),
        (
            b"<methodCall><methodName>m</methodName><params><param><value><blob/></value></param></params>"
            b"</methodCall>",
            "malformed",
        ),
        (
            b"<methodCall><methodName>m</methodName>" + b"<a>" * 40 + b"</a>" * 40 + b"</methodCall>",
            "too_deep",
        ),
    ],
)
def test_refuses_hostile_or_broken_bodies(body: bytes, reason: str) -> None:
    with pytest.raises(XmlRpcError) as caught:
        parse_call(body)
    assert caught.value.reason == reason


def test_refuses_oversized_body_before_parsing() -> None:
    body = dumps_call("m", ["x" * 70_000])
    with pytest.raises(XmlRpcError) as caught:
        parse_call(body)
    assert caught.value.reason == "too_large"
    assert parse_call(body, max_bytes=len(body))[1] == ["x" * 70_000]


# Text XML 1.0 can carry: no control characters but tab and newline (a parser folds CR into LF).
xml_text = st.text(st.characters(exclude_categories=("Cs", "Cc", "Cn")) | st.sampled_from("\t\n"))
json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | xml_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(xml_text, inner, max_size=4),
    max_leaves=20,
)


@given(st.lists(json_like, max_size=4))
def test_round_trip_property(params: list[Any]) -> None:
    assert parse_call(dumps_call("m", params), max_bytes=10**7) == ("m", params)


_EX = 'xmlns:ex="http://ws.apache.org/xmlrpc/namespaces/extensions"'


def _answer(value_xml: str) -> bytes:
    return (
        f'<?xml version="1.0"?><methodResponse {_EX}><params><param>'
        f"<value>{value_xml}</value></param></params></methodResponse>"
    ).encode()


@pytest.mark.parametrize(
    ("value_xml", "expected"),
    [
        ("<ex:i8>99999999999999999999999</ex:i8>", 99999999999999999999999),
        ("<i8>1763800000123</i8>", 1763800000123),
        ("<ex:i1>7</ex:i1>", 7),
        ("<ex:i2>-300</ex:i2>", -300),
        ("<ex:nil/>", None),
        ("<nil/>", None),
        ("<ex:float>1.5</ex:float>", 1.5),
        ("untyped text", "untyped text"),
        ("", ""),
        ("<string/>", ""),
        (
            "<ex:dateTime>2026-01-02T03:04:05.123+01:00</ex:dateTime>",
            dt.datetime(2026, 1, 2, 2, 4, 5, 123000, tzinfo=dt.UTC),
        ),
        (
            "<dateTime.iso8601>20260102T03:04:05Z</dateTime.iso8601>",
            dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        ),
        ("<dateTime.iso8601>20260102T03:04:05</dateTime.iso8601>", dt.datetime(2026, 1, 2, 3, 4, 5)),
    ],
)
def test_java_xmlrpc_extension_and_untyped_values_are_read(value_xml: str, expected: Any) -> None:
    assert parse_response(_answer(value_xml)) == expected


def test_utf16_and_utf32_bodies_with_a_bom_are_read() -> None:
    text = '<?xml version="1.0" encoding="UTF-16"?><methodCall><methodName>a.b</methodName></methodCall>'
    assert parse_call(text.encode("utf-16")) == ("a.b", [])
    assert parse_call(text.replace("UTF-16", "UTF-32").encode("utf-32")) == ("a.b", [])


@pytest.mark.parametrize("encoding", ["UTF-7", "x-no-such-codec", "ISO-8859-1", "utf-16"])
def test_declared_encodings_other_than_utf8_are_refused(encoding: str) -> None:
    body = f'<?xml version="1.0" encoding="{encoding}"?><methodCall><methodName>a</methodName></methodCall>'
    with pytest.raises(XmlRpcError) as refused:
        parse_call(body.encode())
    assert refused.value.reason == "encoding"


def test_a_namespaced_dtd_is_still_refused() -> None:
    body = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">]>'
        b"<methodCall><methodName>&lol;</methodName></methodCall>"
    )
    with pytest.raises(XmlRpcError):
        parse_call(body)
