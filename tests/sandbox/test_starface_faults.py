"""Injected faults, hostile request bodies and the control API's own guard."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from service.starface import protocol as sp
from service.starface.xmlrpc import Fault, parse_response
from tests.fixtures.starface_sandbox import (
    CREDS,
    ControlError,
    Factory,
    RawStarfaceClient,
    StarfaceSandboxHandle,
    hand_uci_token,
)


@pytest.fixture
def pbx(starface_sandbox: Factory) -> StarfaceSandboxHandle:
    handle = starface_sandbox()
    handle.add_user("0001", "geheim")
    return handle


@pytest.fixture
def client(pbx: StarfaceSandboxHandle) -> Iterator[RawStarfaceClient]:
    raw = RawStarfaceClient(pbx, timeout=5.0)
    yield raw
    raw.close()


def _healthy(client: RawStarfaceClient) -> bool:
    return client.http.get("/rest/login", headers={"X-Version": "2"}).status_code == 200


# -- faults ---------------------------------------------------------------------------------------------


def test_down_refuse_closes_the_port_and_keeps_control_reachable(
    pbx: StarfaceSandboxHandle, client: RawStarfaceClient
) -> None:
    assert _healthy(client)  # also leaves a keep-alive connection open in the client's pool
    pbx.set_faults(down="refuse")
    with pytest.raises(httpx.ConnectError):
        client.http.get("/rest/login", headers={"X-Version": "2"})
    with pytest.raises(httpx.ConnectError):
        client.uci("connection.login", **CREDS)
    assert pbx.state()["faults"]["down"] == "refuse"
    pbx.clear_faults()
    assert _healthy(client)  # back on the same port


def test_down_503(pbx: StarfaceSandboxHandle, client: RawStarfaceClient) -> None:
    pbx.set_faults(down="503")
    assert client.http.get("/rest/login", headers={"X-Version": "2"}).status_code == 503
    assert client.uci("connection.login", **CREDS).status_code == 503
    # The control routes under the PBX's own base URL are not affected by faults.
    control = client.http.get("/control/faults", headers={"Authorization": f"Bearer {pbx.control_token}"})
    assert control.json()["down"] == "503"
    pbx.set_faults(down="none")
    assert _healthy(client)


def test_next_n_requests_answer_500(pbx: StarfaceSandboxHandle, client: RawStarfaceClient) -> None:
    pbx.set_faults(errors=2)
    statuses = [client.http.get("/rest/login", headers={"X-Version": "2"}).status_code for _ in range(3)]
    assert statuses == [500, 500, 200]
    assert pbx.state()["faults"]["errors"] == 0


def test_slow_delays_every_request(pbx: StarfaceSandboxHandle, client: RawStarfaceClient) -> None:
    pbx.set_faults(slow_seconds=0.3)
    started = time.monotonic()
    assert _healthy(client)
    assert time.monotonic() - started >= 0.3
    with pytest.raises(httpx.ReadTimeout):
        client.http.get("/rest/login", headers={"X-Version": "2"}, timeout=0.1)
    started = time.monotonic()
    pbx.state()  # the control API is never slowed down
    assert time.monotonic() - started < 0.3
    pbx.clear_faults()
    started = time.monotonic()
    assert _healthy(client)
    assert time.monotonic() - started < 0.3


def test_dropped_session_faults_until_relogin(pbx: StarfaceSandboxHandle, client: RawStarfaceClient) -> None:
    client.uci_value("connection.login", **CREDS)
    pbx.drop_session("0001")
    with pytest.raises(Fault) as caught:
        client.uci_value("connection.keepAlive", **CREDS)
    assert caught.value.code == sp.FAULT_NOT_LOGGED_IN
    assert caught.value.message == sp.FAULT_NOT_LOGGED_IN_TEXT
    assert client.uci_value("connection.login", **CREDS) is True
    assert client.uci_value("connection.keepAlive", **CREDS) is True
    assert [d["reason"] for d in pbx.state()["sessionDrops"]] == ["dropped"]


def test_restart_forgets_sessions_and_rest_tokens(
    pbx: StarfaceSandboxHandle, client: RawStarfaceClient
) -> None:
    token = client.rest_login("0001", "geheim")
    client.uci_value("connection.login", **CREDS)
    call_id = pbx.place_call("0001")
    pbx.restart()
    assert client.rest_get("/rest/users/me", token=token).status_code == 401
    with pytest.raises(Fault):
        client.uci_value("connection.keepAlive", **CREDS)
    assert pbx.calls()["active"] == []
    assert call_id in {c["id"] for c in pbx.calls()["ended"]}


# -- hostile bodies on /xml-rpc -----------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<methodCall><methodName>&lol3;</methodName></methodCall>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<methodCall><methodName>ucp.v30.requests.connection.login</methodName>
<params><param><value><string>&xxe;</string></value></param></params></methodCall>"""


def _post(client: RawStarfaceClient, body: bytes, authenticated: bool = True) -> httpx.Response:
    query = {sp.UCI_AUTH_PARAM: hand_uci_token("0001", "geheim")} if authenticated else {}
    return client.http.post("/xml-rpc", params=query, content=body)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (BILLION_LAUGHS, "dtd"),
        (EXTERNAL_ENTITY, "dtd"),
        (b"\x00\xff garbage \x13", "malformed"),
        (b"<methodCall><methodName>x</methodName>", "malformed"),
        (b"<methodResponse><params/></methodResponse>", "malformed"),
        (b"", "malformed"),
    ],
)
def test_hostile_bodies_are_faults_and_the_server_stays_fine(
    pbx: StarfaceSandboxHandle, client: RawStarfaceClient, body: bytes, reason: str
) -> None:
    response = _post(client, body)
    assert response.status_code == 200
    with pytest.raises(Fault, match=reason):
        parse_response(response.content)
    assert pbx.session("0001") is None  # nothing was executed
    assert client.uci_value("connection.login", **CREDS) is True


def test_oversized_bodies_are_refused_before_parsing(client: RawStarfaceClient) -> None:
    huge = b"<methodCall><methodName>" + b"a" * (64 * 1024) + b"</methodName></methodCall>"
    assert _post(client, huge).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while streaming
        for _ in range(100):
            yield b"x" * 1024

    streamed = client.http.post(
        "/xml-rpc", params={sp.UCI_AUTH_PARAM: hand_uci_token("0001", "geheim")}, content=chunks()
    )
    assert streamed.status_code == 413
    # Without valid credentials the body is not even read.
    assert _post(client, huge, authenticated=False).status_code == 401
    assert client.uci_value("connection.login", **CREDS) is True


def test_deeply_nested_values_are_refused(client: RawStarfaceClient) -> None:
    nested = b"<value><array><data>" * 40 + b"<value>x</value>" + b"</data></array></value>" * 40
    body = (
        b"<methodCall><methodName>ucp.v30.requests.connection.login</methodName><params><param>"
        + nested
        + b"</param></params></methodCall>"
    )
    with pytest.raises(Fault, match="too_deep"):
        parse_response(_post(client, body).content)
    assert client.uci_value("connection.login", **CREDS) is True


def test_rest_login_body_is_bounded(client: RawStarfaceClient) -> None:
    response = client.http.post(
        "/rest/login", content=b"{" + b" " * (32 * 1024) + b"}", headers={"X-Version": "2"}
    )
    assert response.status_code == 413
    assert client.http.post("/rest/login", content=b"[", headers={"X-Version": "2"}).status_code == 400


# -- the control API's guard --------------------------------------------------------------------------


def test_control_api_requires_the_token(pbx: StarfaceSandboxHandle) -> None:
    with httpx.Client(verify=pbx.ssl_context(), trust_env=False) as http:
        for base in (pbx.control_url, pbx.base_url):
            assert http.get(f"{base}/control/state").status_code == 401
            wrong = {"Authorization": "Bearer wrong"}
            assert (
                http.post(f"{base}/control/clock/advance", json={"seconds": 9}, headers=wrong).status_code
                == 401
            )
            right = {"Authorization": f"Bearer {pbx.control_token}"}
            assert http.get(f"{base}/control/state", headers=right).status_code == 200
        # The control listener serves nothing but /control.
        assert http.get(f"{pbx.control_url}/rest/login", headers={"X-Version": "2"}).status_code == 404


def _refused(action: Callable[[], object]) -> int:
    with pytest.raises(ControlError) as caught:
        action()
    return caught.value.status


def test_control_api_validates_bodies(pbx: StarfaceSandboxHandle) -> None:
    assert _refused(lambda: pbx.control("POST", "/control/users", {"login": "0002"})) == 400
    assert _refused(lambda: pbx.add_user("0001", "again")) == 409
    assert _refused(lambda: pbx.set_faults(down="sideways")) == 400
    assert _refused(lambda: pbx.control("POST", "/control/clock/advance", {"seconds": -5})) == 400
    assert _refused(lambda: pbx.add_group("G", ["nobody"])) == 404
    assert _refused(lambda: pbx.update_user("0001", id=5)) == 400
    assert pbx.state()["groups"] == []
