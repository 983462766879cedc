"""Call-state callbacks posted by the STARFACE sandbox to a real loopback XML-RPC endpoint."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from service.sandbox.tls import CertificateAuthority
from service.starface import protocol as sp
from tests.fixtures.starface_sandbox import (
    CREDS,
    CallbackReceiver,
    ControlError,
    Factory,
    RawStarfaceClient,
    StarfaceSandboxHandle,
)

ReceiverFactory = Callable[..., CallbackReceiver]


@pytest.fixture
def pbx(starface_sandbox: Factory) -> StarfaceSandboxHandle:
    handle = starface_sandbox()
    handle.add_user(
        "0001", "geheim", email="anna@example.com", first_name="Anna", family_name="Alt", number="201"
    )
    return handle


@pytest.fixture
def receiver(starface_callback_receiver: ReceiverFactory) -> CallbackReceiver:
    return starface_callback_receiver()


def _subscribe(client: RawStarfaceClient, receiver: CallbackReceiver) -> None:
    assert client.uci_value("connection.login", **CREDS, query=receiver.callback_query()) is True
    assert client.uci_value("service.subscribeEvents", "ucp.v30.events.call", **CREDS) is True


def _states(receiver: CallbackReceiver, call_id: str | None = None) -> list[str]:
    return [c.params[0]["state"] for c in receiver.received if call_id in (None, c.params[0]["id"])]


def _telephony(client: RawStarfaceClient) -> str:
    return str(client.uci_value("userState.getUserState", **CREDS)["telephonyState"])


def test_incoming_call_ringing_connected_hangup(
    pbx: StarfaceSandboxHandle, client: RawStarfaceClient, receiver: CallbackReceiver
) -> None:
    _subscribe(client, receiver)
    call_id = pbx.place_call("0001", remote_number="+49711555", remote_name="Erika Mustermann")
    assert _telephony(client) == "RINGING"
    pbx.answer(call_id)
    assert _telephony(client) == "ACTIVE"
    pbx.hangup(call_id)
    assert _telephony(client) == "AVAILABLE"

    received = receiver.received
    assert [c.method for c in received] == ["ucp.v30.events.call.receiveCallState"] * 4
    assert _states(receiver) == ["RINGING", "RINGING", "CONNECTED", "HANGUP"]
    first, second = received[0].params[0], received[1].params[0]
    assert set(first) == {
        "id",
        "state",
        "timestamp",
        "callerNumber",
        "callerName",
        "calledNumber",
        "calledName",
        "groupID",
    }
    assert first["callerName"] == first["calledName"] == first["callerNumber"] == ""
    assert (second["callerNumber"], second["callerName"]) == ("+49711555", "Erika Mustermann")
    assert (second["calledNumber"], second["calledName"]) == ("201", "Anna Alt")
    assert {c.params[0]["id"] for c in received} == {call_id}
    assert all(c.query == {sp.UCI_CALLBACK_USER_PARAM: "0001"} for c in received)
    stamps = [c.params[0]["timestamp"] for c in received]
    assert stamps == sorted(stamps)
    assert abs(stamps[0] / 1000 - pbx.now()) < 60

    deliveries = pbx.deliveries("0001")
    assert [(d["state"], d["status"], d["ok"]) for d in deliveries] == [
        ("RINGING", 200, True),
        ("RINGING", 200, True),
        ("CONNECTED", 200, True),
        ("HANGUP", 200, True),
    ]
    assert all(d["latencyMs"] >= 0 for d in deliveries)
    assert deliveries[0]["url"].startswith(f"http://127.0.0.1:{receiver.port}/starface/callback?")


def test_outgoing_call_proceeding_connected_hangup(
    pbx: StarfaceSandboxHandle, client: RawStarfaceClient, receiver: CallbackReceiver
) -> None:
    _subscribe(client, receiver)
    call_id = pbx.place_call("0001", direction="outgoing", remote_number="0800123", remote_name="Hotline")
    assert _telephony(client) == "ACTIVE"
    pbx.answer(call_id)
    pbx.hangup(call_id)
    assert _states(receiver) == ["PROCEEDING", "CONNECTED", "HANGUP"]
    proceeding = receiver.received[0].params[0]
    assert (proceeding["callerNumber"], proceeding["callerName"]) == ("201", "Anna Alt")
    assert (proceeding["calledNumber"], proceeding["calledName"]) == ("0800123", "Hotline")


def test_missed_call_has_no_connected(
    pbx: StarfaceSandboxHandle, client: RawStarfaceClient, receiver: CallbackReceiver
) -> None:
    _subscribe(client, receiver)
    call_id = pbx.place_call("0001")
    pbx.hangup(call_id)
    assert _states(receiver) == ["RINGING", "RINGING", "HANGUP"]
    assert pbx.calls()["ended"][-1]["connected"] is False


def test_two_calls_at_once(
    pbx: StarfaceSandboxHandle, client: RawStarfaceClient, receiver: CallbackReceiver
) -> None:
    _subscribe(client, receiver)
    first = pbx.place_call("0001", remote_number="111")
    pbx.answer(first)
    second = pbx.place_call("0001", remote_number="222", group_id="600")
    assert first != second
    assert _telephony(client) == "ACTIVE"  # on one call while the other rings
    pbx.hangup(first)
    assert _telephony(client) == "RINGING"
    pbx.answer(second)
    pbx.hangup(second)
    assert _telephony(client) == "AVAILABLE"
    assert _states(receiver, first) == ["RINGING", "RINGING", "CONNECTED", "HANGUP"]
    assert _states(receiver, second) == ["RINGING", "RINGING", "CONNECTED", "HANGUP"]
    assert {c.params[0]["groupID"] for c in receiver.received if c.params[0]["id"] == second} == {"600"}


def test_empty_state_in_the_first_event(
    pbx: StarfaceSandboxHandle, client: RawStarfaceClient, receiver: CallbackReceiver
) -> None:
    _subscribe(client, receiver)
    call_id = pbx.place_call("0001", empty_first_state=True)
    pbx.hangup(call_id)
    assert _states(receiver) == ["", "RINGING", "HANGUP"]


def test_answering_twice_or_an_unknown_call_is_refused(
    pbx: StarfaceSandboxHandle, client: RawStarfaceClient, receiver: CallbackReceiver
) -> None:
    _subscribe(client, receiver)
    call_id = pbx.place_call("0001")
    pbx.answer(call_id)
    with pytest.raises(ControlError) as twice:
        pbx.answer(call_id)
    assert twice.value.status == 409
    pbx.hangup(call_id)
    with pytest.raises(ControlError) as gone:
        pbx.hangup(call_id)
    assert gone.value.status == 404


def test_only_subscribed_live_sessions_get_callbacks(
    pbx: StarfaceSandboxHandle, client: RawStarfaceClient, receiver: CallbackReceiver
) -> None:
    client.uci_value("connection.login", **CREDS, query=receiver.callback_query())
    pbx.hangup(pbx.place_call("0001"))
    assert receiver.received == []  # logged in with a callback but not subscribed

    assert client.uci_value("service.subscribeEvents", "ucp.v30.events.call", **CREDS) is True
    assert client.uci_value("service.unsubscribeEvents", "ucp.v30.events.call", **CREDS) is True
    pbx.hangup(pbx.place_call("0001"))
    assert receiver.received == []

    _subscribe(client, receiver)
    pbx.advance(61)  # the session expires: the PBX forgets the callback with it
    pbx.hangup(pbx.place_call("0001"))
    assert receiver.received == []

    _subscribe(client, receiver)
    pbx.drop_session("0001")
    pbx.hangup(pbx.place_call("0001"))
    assert receiver.received == []
    assert pbx.deliveries() == []


def test_relogin_replaces_the_callback(
    pbx: StarfaceSandboxHandle,
    client: RawStarfaceClient,
    starface_callback_receiver: ReceiverFactory,
) -> None:
    old = starface_callback_receiver(path="/old")
    new = starface_callback_receiver(path="/new")
    _subscribe(client, old)
    _subscribe(client, new)
    pbx.hangup(pbx.place_call("0001"))
    assert old.received == []
    assert _states(new) == ["RINGING", "RINGING", "HANGUP"]


def test_https_callback_verified_against_the_sandbox_ca(
    pbx: StarfaceSandboxHandle,
    client: RawStarfaceClient,
    starface_callback_receiver: ReceiverFactory,
) -> None:
    trusted = starface_callback_receiver(ca=pbx.ca)
    assert trusted.scheme == "https"
    _subscribe(client, trusted)
    pbx.hangup(pbx.place_call("0001"))
    assert _states(trusted) == ["RINGING", "RINGING", "HANGUP"]

    stranger = starface_callback_receiver(ca=CertificateAuthority("someone else"))
    _subscribe(client, stranger)
    pbx.hangup(pbx.place_call("0001"))
    assert stranger.received == []
    failed = pbx.deliveries("0001")[-3:]
    assert all(not d["ok"] and d["status"] is None and d["error"] for d in failed)


def test_https_callback_with_a_configured_ca_file(
    starface_sandbox: Factory, starface_callback_receiver: ReceiverFactory, tmp_path: Any
) -> None:
    own_ca = CertificateAuthority("bridge CA")
    handle = starface_sandbox(callback_ca_file=own_ca.write_ca(tmp_path / "bridge-ca.crt"))
    handle.add_user("0001", "geheim")
    raw = RawStarfaceClient(handle)
    try:
        receiver = starface_callback_receiver(ca=own_ca)
        _subscribe(raw, receiver)
        handle.hangup(handle.place_call("0001"))
        assert _states(receiver) == ["RINGING", "RINGING", "HANGUP"]
        # The sandbox's own CA is no longer trusted once another CA file is configured.
        receiver_own = starface_callback_receiver(ca=handle.ca)
        _subscribe(raw, receiver_own)
        handle.hangup(handle.place_call("0001"))
        assert receiver_own.received == []
    finally:
        raw.close()


def test_failing_receivers_are_recorded(
    pbx: StarfaceSandboxHandle, client: RawStarfaceClient, receiver: CallbackReceiver
) -> None:
    _subscribe(client, receiver)
    receiver.status = 500
    pbx.place_call("0001", sparse_first=False)
    receiver.status = 200
    receiver.fault = (7, "nope")
    pbx.place_call("0001", sparse_first=False)
    deliveries = pbx.deliveries("0001")
    assert [(d["status"], d["ok"]) for d in deliveries] == [(500, False), (200, False)]
    assert deliveries[0]["error"] == "HTTP 500"
    assert deliveries[1]["error"] == "fault 7"
    assert len(receiver.received) == 2  # not retried


def test_callbacks_do_not_wait_when_asked_not_to(
    pbx: StarfaceSandboxHandle, client: RawStarfaceClient, receiver: CallbackReceiver
) -> None:
    _subscribe(client, receiver)
    receiver.delay = 0.2
    call_id = pbx.place_call("0001", wait=False)
    pbx.answer(call_id, wait=False)
    pbx.hangup(call_id, wait=False)
    assert len(pbx.deliveries()) < 4
    found = pbx.wait_for_deliveries(4, timeout=5)
    assert [d["state"] for d in found] == ["RINGING", "RINGING", "CONNECTED", "HANGUP"]  # still in order


async def test_async_tests_can_await_deliveries(
    pbx: StarfaceSandboxHandle, client: RawStarfaceClient, receiver: CallbackReceiver
) -> None:
    _subscribe(client, receiver)
    call_id = pbx.place_call("0001", wait=False)
    pbx.hangup(call_id, wait=False)
    found = await pbx.await_deliveries(3, login="0001")
    assert [d["state"] for d in found] == ["RINGING", "RINGING", "HANGUP"]
