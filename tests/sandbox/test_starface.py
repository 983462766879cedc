"""The STARFACE sandbox's REST, OAuth and UCI behaviour, over real sockets."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from service.starface import protocol as sp
from service.starface.xmlrpc import Fault, parse_response
from tests.fixtures.starface_sandbox import Creds, Factory, RawStarfaceClient, StarfaceSandboxHandle


@pytest.fixture
def pbx(starface_sandbox: Factory) -> StarfaceSandboxHandle:
    handle = starface_sandbox()
    handle.add_user(
        "0001", "geheim", email="anna@example.com", first_name="Anna", family_name="Alt", oauth_allowed=True
    )
    handle.add_user("0002", "passwort", email="bert@example.com", first_name="Bert", family_name="Berg")
    return handle


def _fault_code(response: httpx.Response) -> int:
    assert response.status_code == 200
    with pytest.raises(Fault) as caught:
        parse_response(response.content)
    return caught.value.code


# -- REST legacy login ------------------------------------------------------------------------------


def test_rest_login_with_a_secret_computed_by_hand(client: RawStarfaceClient) -> None:
    template = client.http.get("/rest/login", headers={"X-Version": "2"})
    assert template.status_code == 200
    body = template.json()
    assert body["loginType"] == "Internal"
    assert body["secret"] is None
    nonce = body["nonce"]
    inner = hashlib.sha512(b"geheim").hexdigest()
    secret = "0001:" + hashlib.sha512(("0001" + nonce + inner).encode()).hexdigest()
    assert secret == sp.rest_login_secret("0001", "geheim", nonce)  # the shared formula agrees
    response = client.http.post(
        "/rest/login",
        json={"loginType": "Internal", "nonce": nonce, "secret": secret},
        headers={"X-Version": "2"},
    )
    assert response.status_code == 200
    token = response.json()["token"]
    me = client.rest_get("/rest/users/me", token=token)
    assert me.status_code == 200
    assert me.json()["login"] == "0001"


def _post_login(client: RawStarfaceClient, nonce: str, secret: str) -> httpx.Response:
    return client.http.post(
        "/rest/login",
        json={"loginType": "Internal", "nonce": nonce, "secret": secret},
        headers={"X-Version": "2"},
    )


def test_rest_wrong_secret_is_400_and_a_nonce_is_single_use(client: RawStarfaceClient) -> None:
    nonce = client.http.get("/rest/login", headers={"X-Version": "2"}).json()["nonce"]
    wrong = sp.rest_login_secret("0001", "falsch", nonce)
    assert _post_login(client, nonce, wrong).status_code == 400
    # The nonce was spent by the failed attempt: even the right secret is refused with it now.
    assert _post_login(client, nonce, sp.rest_login_secret("0001", "geheim", nonce)).status_code == 400
    # UCI's "*" formula is not the REST formula.
    nonce = client.http.get("/rest/login", headers={"X-Version": "2"}).json()["nonce"]
    inner = hashlib.sha512(b"geheim").hexdigest()
    star = "0001:" + hashlib.sha512(("0001*" + nonce + inner).encode()).hexdigest()
    assert _post_login(client, nonce, star).status_code == 400
    assert _post_login(client, "made-up-nonce", "0001:00").status_code == 400


def test_rest_requires_x_version(client: RawStarfaceClient) -> None:
    assert client.http.get("/rest/login").status_code == 400
    assert client.http.get("/rest/login", headers={"X-Version": "1"}).status_code == 400
    token = client.rest_login("0001", "geheim")
    assert client.rest_get("/rest/users", token=token, version=False).status_code == 400
    assert client.rest_get("/rest/users", token=token).status_code == 200


def test_rest_token_lives_four_hours_on_the_sandbox_clock(
    pbx: StarfaceSandboxHandle, client: RawStarfaceClient
) -> None:
    assert client.rest_get("/rest/users").status_code == 401
    assert client.rest_get("/rest/users", token="not-a-token").status_code == 401
    token = client.rest_login("0001", "geheim")
    pbx.advance(4 * 3600 - 30)
    assert client.rest_get("/rest/users", token=token).status_code == 200
    pbx.advance(31)
    assert client.rest_get("/rest/users", token=token).status_code == 401


def test_rest_logout_invalidates_the_token(client: RawStarfaceClient) -> None:
    token = client.rest_login("0002", "passwort")
    assert client.rest_get("/rest/users/me", token=token).status_code == 200
    deleted = client.http.delete("/rest/login", headers={"X-Version": "2", "authToken": token})
    assert deleted.status_code == 204
    assert client.rest_get("/rest/users/me", token=token).status_code == 401


# -- users and groups ---------------------------------------------------------------------------------


def test_users_carry_the_swagger_fields(client: RawStarfaceClient) -> None:
    token = client.rest_login("0002", "passwort")
    users = client.rest_get("/rest/users", token=token).json()
    assert [u["login"] for u in users] == ["0001", "0002"]
    anna = users[0]
    for key in ("id", "login", "email", "firstName", "familyName", "language", "personId"):
        assert key in anna
    assert isinstance(anna["id"], int)
    assert anna["email"] == "anna@example.com"
    assert anna["password"] == ""  # "This field will be empty when a user is fetched"
    one = client.rest_get(f"/rest/users/{anna['id']}", token=token)
    assert one.json()["login"] == "0001"
    assert client.rest_get("/rest/users/999999", token=token).status_code == 404
    found = client.rest_get("/rest/users?searchTerm=bert@", token=token).json()
    assert [u["login"] for u in found] == ["0002"]


def test_groups_list_and_members_as_assignable_users(
    pbx: StarfaceSandboxHandle, client: RawStarfaceClient
) -> None:
    pbx.add_user("0003", "x", email="carl@example.com", first_name="Carl", family_name="Cord")
    sales = pbx.add_group("Vertrieb", ["0001", "0003"], internalNumber="600")
    pbx.add_group("Technik", ["0002"])
    token = client.rest_login("0001", "geheim")
    listed = client.rest_get("/rest/groups", token=token).json()
    assert {g["groupname"] for g in listed} == {"Vertrieb", "Technik"}
    item = next(g for g in listed if g["groupname"] == "Vertrieb")
    assert item == {
        "id": sales["id"],
        "groupname": "Vertrieb",
        "groupinternalnumber": "600",
        "groupexternalnumber": "",
    }
    group = client.rest_get(f"/rest/groups/{sales['id']}", token=token).json()
    assert group["name"] == "Vertrieb"
    assert isinstance(group["groupId"], str)
    assigned = {u["id"]: u["assigned"] for u in group["assignableUsers"]}
    ids = {u["login"]: u["id"] for u in client.rest_get("/rest/users", token=token).json()}
    assert assigned == {ids["0001"]: True, ids["0002"]: False, ids["0003"]: True}
    pbx.set_group_members(sales["id"], ["0002"])
    group = client.rest_get(f"/rest/groups/{sales['id']}", token=token).json()
    assert [u["id"] for u in group["assignableUsers"] if u["assigned"]] == [ids["0002"]]
    assert client.rest_get("/rest/groups/1", token=token).status_code == 404


# -- OAuth (STARFACE 10) --------------------------------------------------------------------------------


def test_oauth_password_grant_refresh_and_bearer_use(
    pbx: StarfaceSandboxHandle, client: RawStarfaceClient
) -> None:
    granted = client.password_grant("0001", "geheim")
    assert granted.status_code == 200
    body = granted.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 300
    assert body["refresh_expires_in"] == 21600
    assert body["scope"] == "login"
    access = body["access_token"]
    assert client.rest_get("/rest/users/me", bearer=access).json()["login"] == "0001"
    assert client.uci_value("connection.login", jwt=access) is True
    # A refresh token is not an access token.
    assert client.rest_get("/rest/users/me", bearer=body["refresh_token"]).status_code == 401

    pbx.advance(301)
    assert client.rest_get("/rest/users/me", bearer=access).status_code == 401
    assert client.uci("connection.keepAlive", jwt=access).status_code == 401

    refreshed = client.oauth(
        client_id="rest-client-headless",
        client_secret=pbx.oauth_client_secret,
        grant_type="refresh_token",
        refresh_token=body["refresh_token"],
    )
    assert refreshed.status_code == 200
    fresh = refreshed.json()["access_token"]
    assert client.rest_get("/rest/users/me", bearer=fresh).status_code == 200

    pbx.advance(21600)
    expired_refresh = client.oauth(
        client_id="rest-client-headless",
        client_secret=pbx.oauth_client_secret,
        grant_type="refresh_token",
        refresh_token=body["refresh_token"],
    )
    assert expired_refresh.status_code == 400
    assert expired_refresh.json()["error"] == "invalid_grant"


def test_oauth_refusals(pbx: StarfaceSandboxHandle, client: RawStarfaceClient) -> None:
    no_permission = client.password_grant("0002", "passwort")
    assert no_permission.status_code == 401
    assert no_permission.json()["error"] == "invalid_grant"
    wrong_password = client.password_grant("0001", "falsch")
    assert wrong_password.status_code == 401
    assert wrong_password.json()["error"] == "invalid_grant"
    wrong_client = client.password_grant("0001", "geheim", client_secret="not-the-secret")
    assert wrong_client.status_code == 401
    assert wrong_client.json()["error"] == "invalid_client"
    unsupported = client.oauth(client_id="rest-client-headless", grant_type="client_credentials")
    assert unsupported.status_code == 400
    assert unsupported.json()["error"] == "unsupported_grant_type"
    # Granting the permission later makes the same request succeed.
    pbx.update_user("0002", oauthAllowed=True)
    assert client.password_grant("0002", "passwort").status_code == 200


def test_revoked_permission_stops_refresh(pbx: StarfaceSandboxHandle, client: RawStarfaceClient) -> None:
    refresh_token = client.password_grant("0001", "geheim").json()["refresh_token"]
    pbx.update_user("0001", oauthAllowed=False)
    refused = client.oauth(
        client_id="rest-client-headless",
        client_secret=pbx.oauth_client_secret,
        grant_type="refresh_token",
        refresh_token=refresh_token,
    )
    assert refused.status_code == 400


def test_configured_oauth_client_secret_is_the_one_accepted(starface_sandbox: Factory) -> None:
    handle = starface_sandbox(tls=False, oauth_client_secret="configured-secret")
    handle.add_user("0009", "pw", oauth_allowed=True)
    raw = RawStarfaceClient(handle)
    try:
        assert handle.base_url.startswith("http://")
        assert raw.password_grant("0009", "pw", client_secret="configured-secret").status_code == 200
        assert raw.password_grant("0009", "pw", client_secret="other").status_code == 401
    finally:
        raw.close()


# -- UCI sessions -----------------------------------------------------------------------------------------


def test_uci_credentials_that_do_not_authenticate_are_401(client: RawStarfaceClient) -> None:
    wrong = client.uci("connection.login", login="0001", password="falsch")
    assert wrong.status_code == 401
    assert wrong.content == b""
    assert client.uci("connection.login").status_code == 401
    token = hashlib.sha512(("0001*" + hashlib.sha512(b"geheim").hexdigest()).encode()).hexdigest()
    plain = client.uci("connection.login", query={sp.UCI_AUTH_PARAM: token})  # missing "login:"
    assert plain.status_code == 401
    assert client.uci("connection.login", jwt="not.a.jwt").status_code == 401


def test_uci_session_lifecycle_on_the_sandbox_clock(
    pbx: StarfaceSandboxHandle, client: RawStarfaceClient
) -> None:
    creds: Creds = {"login": "0001", "password": "geheim"}
    assert _fault_code(client.uci("connection.keepAlive", **creds)) == sp.FAULT_NOT_LOGGED_IN
    assert client.uci_value("connection.login", **creds) is True
    first = pbx.session("0001")
    assert first is not None
    for _ in range(3):  # keepAlive every 50 s keeps the session well past its 60 s timeout
        pbx.advance(50)
        assert client.uci_value("connection.keepAlive", **creds) is True
    assert pbx.session("0001") is not None
    pbx.advance(61)
    assert pbx.session("0001") is None
    assert _fault_code(client.uci("connection.keepAlive", **creds)) == sp.FAULT_NOT_LOGGED_IN
    drops = pbx.state()["sessionDrops"]
    assert [(d["session"], d["reason"]) for d in drops] == [(first["id"], "expired")]
    assert client.uci_value("connection.login", **creds) is True
    second = pbx.session("0001")
    assert second is not None
    assert second["id"] != first["id"]
    assert client.uci_value("connection.logout", **creds) is True
    assert _fault_code(client.uci("userState.getUserState", **creds)) == sp.FAULT_NOT_LOGGED_IN


def test_any_call_refreshes_the_session(pbx: StarfaceSandboxHandle, client: RawStarfaceClient) -> None:
    creds: Creds = {"login": "0001", "password": "geheim"}
    client.uci_value("connection.login", **creds)
    pbx.advance(55)
    client.uci_value("userState.getUserState", **creds)
    pbx.advance(55)
    assert client.uci_value("userState.setChatPresenceMessage", "still here", **creds) is True


def test_configurable_session_timeout(starface_sandbox: Factory) -> None:
    handle = starface_sandbox(session_timeout=5)
    handle.add_user("0001", "pw")
    raw = RawStarfaceClient(handle)
    try:
        raw.uci_value("connection.login", login="0001", password="pw")
        handle.advance(6)
        code = _fault_code(raw.uci("connection.keepAlive", login="0001", password="pw"))
        assert code == sp.FAULT_NOT_LOGGED_IN
    finally:
        raw.close()


def test_methods_of_another_namespace_do_not_exist(starface_sandbox: Factory) -> None:
    v22 = starface_sandbox(namespace="v22")
    v22.add_user("0001", "pw")
    raw = RawStarfaceClient(v22)
    try:
        assert raw.uci_value("connection.login", login="0001", password="pw") is True
        refused = raw.uci("connection.keepAlive", login="0001", password="pw", namespace="v30")
        with pytest.raises(Fault, match="no such method"):
            parse_response(refused.content)
        assert raw.uci_value("service.subscribeEvents", "ucp.v22.events.call", login="0001", password="pw")
        unknown = raw.uci_value("service.subscribeEvents", "ucp.v30.events.call", login="0001", password="pw")
        assert unknown is False
        bogus = raw.uci("userState.setAvatar", login="0001", password="pw", namespace="v22")
        with pytest.raises(Fault, match="no such method"):
            parse_response(bogus.content)
    finally:
        raw.close()


def test_wrong_parameter_types_are_faults(client: RawStarfaceClient) -> None:
    creds: Creds = {"login": "0001", "password": "geheim"}
    client.uci_value("connection.login", **creds)
    assert (
        _fault_code(client.uci("userState.setDoNotDisturbSetting", "yes", **creds)) != sp.FAULT_NOT_LOGGED_IN
    )
    assert _fault_code(client.uci("userState.setChatPresenceMessage", **creds)) != sp.FAULT_NOT_LOGGED_IN
    bad_callback = client.uci(
        "connection.login", **creds, query={sp.UCI_CALLBACK_HOST: "127.0.0.1", sp.UCI_CALLBACK_TYPE: "ftp"}
    )
    assert _fault_code(bad_callback) != sp.FAULT_NOT_LOGGED_IN


# -- DND and status text ---------------------------------------------------------------------------------


def test_dnd_and_status_text_round_trip_with_history(
    pbx: StarfaceSandboxHandle, client: RawStarfaceClient
) -> None:
    creds: Creds = {"login": "0001", "password": "geheim"}
    client.uci_value("connection.login", **creds)
    session = pbx.session("0001")
    assert session is not None
    start = pbx.now()
    assert client.uci_value("userState.setDoNotDisturbSetting", True, **creds) is True
    pbx.advance(10)
    assert client.uci_value("userState.setChatPresenceMessage", "Im Gespräch", **creds) is True
    state = client.uci_value("userState.getUserState", **creds)
    assert state[sp.USER_STATE_DND_KEY] is True
    assert state[sp.USER_STATE_TEXT_KEY] == "Im Gespräch"
    assert state["telephonyState"] == "AVAILABLE"
    for key in ("avatarHash", "chatPresence", "redirectAlwaysActive"):
        assert key in state
    # Another user is untouched: DND and text are per user.
    client.uci_value("connection.login", login="0002", password="passwort")
    other = client.uci_value("userState.getUserState", login="0002", password="passwort")
    assert other[sp.USER_STATE_DND_KEY] is False
    assert other[sp.USER_STATE_TEXT_KEY] == ""

    pbx.set_dnd_on_phone("0001", False)
    history = pbx.history("0001")
    assert [(e["value"], e["source"], e["session"]) for e in history["dnd"]] == [
        (True, "uci", session["id"]),
        (False, "phone", None),
    ]
    assert [(e["value"], e["session"]) for e in history["statusText"]] == [("Im Gespräch", session["id"])]
    assert start <= history["dnd"][0]["at"] < history["statusText"][0]["at"]
    assert history["statusText"][0]["at"] - history["dnd"][0]["at"] >= 10
    assert client.uci_value("userState.getUserState", **creds)[sp.USER_STATE_DND_KEY] is False
    assert pbx.history("0002") == {"dnd": [], "statusText": []}
