"""The STARFACE sandbox's variant modes: a UCC client that overwrites the status text, and Java's
XML-RPC extension types on the wire (answers and callbacks)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

import pytest

from service.sandbox import starface_wire as wire
from service.starface import protocol as sp
from service.starface.xmlrpc import parse_call, parse_response
from tests.fixtures.starface_sandbox import (
    CREDS,
    CallbackReceiver,
    ControlError,
    Factory,
    RawStarfaceClient,
    StarfaceSandboxHandle,
)

EX = 'xmlns:ex="http://ws.apache.org/xmlrpc/namespaces/extensions"'


@pytest.fixture
def pbx(starface_sandbox: Factory) -> StarfaceSandboxHandle:
    handle = starface_sandbox()
    handle.add_user("0001", "geheim", email="anna@example.com", first_name="Anna", family_name="Alt")
    return handle


def _texts(pbx: StarfaceSandboxHandle) -> list[tuple[str, str]]:
    return [(e["value"], e["source"]) for e in pbx.history("0001")["statusText"]]


def _wait(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition did not hold in time"
        time.sleep(0.02)


# -- the UCC client -----------------------------------------------------------------------------------


def test_ucc_client_overwrites_the_status_text_every_period_until_stopped(
    pbx: StarfaceSandboxHandle, client: RawStarfaceClient
) -> None:
    client.uci_value("connection.login", **CREDS)
    answer = pbx.control(
        "PUT", "/control/users/0001/ucc-client", {"everySeconds": 20, "text": "Verfügbar (UCC)"}
    )
    assert answer == {"login": "0001", "everySeconds": 20.0, "text": "Verfügbar (UCC)"}
    _wait(lambda: _texts(pbx) == [("Verfügbar (UCC)", "ucc")])
    assert client.uci_value("userState.setChatPresenceMessage", "Im Gespräch", **CREDS) is True
    assert client.uci_value("userState.getUserState", **CREDS)[sp.USER_STATE_TEXT_KEY] == "Im Gespräch"
    pbx.advance(20)  # one period of sandbox time: the UCC client writes its own text again
    _wait(lambda: len(_texts(pbx)) == 3)
    assert _texts(pbx)[1:] == [("Im Gespräch", "uci"), ("Verfügbar (UCC)", "ucc")]
    assert client.uci_value("userState.getUserState", **CREDS)[sp.USER_STATE_TEXT_KEY] == "Verfügbar (UCC)"

    pbx.control("DELETE", "/control/users/0001/ucc-client")
    pbx.advance(40)
    time.sleep(0.2)
    assert len(_texts(pbx)) == 3  # stopped: no more writes
    with pytest.raises(ControlError) as missing:
        pbx.control("DELETE", "/control/users/0001/ucc-client")
    assert missing.value.status == 404
    with pytest.raises(ControlError) as bad:
        pbx.control("PUT", "/control/users/0001/ucc-client", {"everySeconds": 0, "text": "x"})
    assert bad.value.status == 400


def test_phone_dnd_is_what_get_user_state_answers(
    pbx: StarfaceSandboxHandle, client: RawStarfaceClient
) -> None:
    client.uci_value("connection.login", **CREDS)
    client.uci_value("userState.setDoNotDisturbSetting", False, **CREDS)
    pbx.set_dnd_on_phone("0001", True)
    assert client.uci_value("userState.getUserState", **CREDS)[sp.USER_STATE_DND_KEY] is True
    assert pbx.user("0001")["dnd"] is True
    assert [e["source"] for e in pbx.history("0001")["dnd"]] == ["uci", "phone"]


# -- extension value types on the wire ------------------------------------------------------------


def test_wire_types_mode_is_plain_by_default_and_refuses_unknown_values(pbx: StarfaceSandboxHandle) -> None:
    assert pbx.control("GET", "/control/modes") == {"wireTypes": "plain"}
    with pytest.raises(ControlError) as bad:
        pbx.control("PUT", "/control/modes", {"wireTypes": "xml"})
    assert bad.value.status == 400
    assert pbx.control("PUT", "/control/modes", {"wireTypes": "extensions"}) == {"wireTypes": "extensions"}
    assert pbx.control("GET", "/control/modes") == {"wireTypes": "extensions"}


def test_extension_types_in_uci_answers(pbx: StarfaceSandboxHandle, client: RawStarfaceClient) -> None:
    client.uci_value("connection.login", **CREDS)
    client.uci_value("userState.setChatPresenceMessage", "Im Gespräch", **CREDS)
    plain = client.uci("userState.getUserState", **CREDS).content
    assert b"<string>Im Gespr" in plain
    assert b"ex:" not in plain
    pbx.control("PUT", "/control/modes", {"wireTypes": "extensions"})
    raw = client.uci("userState.getUserState", **CREDS).content
    text = raw.decode()
    assert EX in text
    assert "<value>Im Gespräch</value>" in text  # untyped string
    assert "<name>avatarHash</name><value><nil/></value>" in text  # an empty value is null
    state = parse_response(raw)
    assert state[sp.USER_STATE_TEXT_KEY] == "Im Gespräch"
    assert state[sp.USER_STATE_DND_KEY] is False
    assert state["avatarHash"] is None


def test_extension_types_in_call_callbacks(
    pbx: StarfaceSandboxHandle,
    client: RawStarfaceClient,
    starface_callback_receiver: Callable[..., CallbackReceiver],
) -> None:
    receiver = starface_callback_receiver()
    pbx.control("PUT", "/control/modes", {"wireTypes": "extensions"})
    assert client.uci_value("connection.login", **CREDS, query=receiver.callback_query()) is True
    assert client.uci_value("service.subscribeEvents", "ucp.v30.events.call", **CREDS) is True
    pbx.place_call("0001", remote_number="+49711555", remote_name="Erika")
    sparse, full = receiver.wait_for(2)[:2]
    body = sparse.body.decode()
    assert EX in body
    assert "<name>timestamp</name><value><ex:i8>" in body
    assert "<name>callerName</name><value><nil/></value>" in body
    assert "<name>state</name><value>RINGING</value>" in body
    method, params = parse_call(sparse.body)
    assert method == "ucp.v30.events.call.receiveCallState"
    assert params[0]["callerName"] is None
    assert params[0]["timestamp"] == pytest.approx(pbx.now() * 1000, abs=5000)
    assert full.params[0]["callerName"] == "Erika"


def test_every_extension_type_reads_back_as_the_value_it_encodes() -> None:
    stamp = dt.datetime(2026, 12, 5, 22, 30, 1, 250000, tzinfo=dt.UTC)
    value = {
        "n": 7,
        "big": 2**40,
        "none": None,
        "empty": "",
        "text": "a<b",
        "on": True,
        "at": stamp,
        "l": [1.5],
    }
    body = wire.dumps_response(value, wire.EXTENSIONS)
    text = body.decode()
    for spelled in (
        "<ex:i8>7</ex:i8>",
        "<ex:i8>1099511627776</ex:i8>",
        "<ex:nil/>",
        "<value><nil/></value>",
        "<value>a&lt;b</value>",
        "<ex:dateTime>2026-12-05T22:30:01.250+00:00</ex:dateTime>",
    ):
        assert spelled in text
    assert parse_response(body) == {**value, "empty": None}
    call = wire.dumps_call("ucp.v30.events.call.receiveCallState", [value], wire.EXTENSIONS)
    assert parse_call(call) == ("ucp.v30.events.call.receiveCallState", [{**value, "empty": None}])
    assert b"ex:" not in wire.dumps_response(value, wire.PLAIN)
