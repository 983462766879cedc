"""One user's UCI session against the STARFACE sandbox."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from service.starface.gateway import LoginRefused, SessionExpired, StarfaceUnavailable
from service.starface.rest import OAuthPasswordGrant, open_http
from service.starface.uci import CallbackTarget, JwtUciAuth, LegacyUciAuth, UciClient
from tests.fixtures.starface_sandbox import StarfaceSandboxHandle

LOGIN, PASSWORD = "0001", "Sehr-geheim-9"
CALLBACK = CallbackTarget("http", "127.0.0.1", 8099, "/starface/uci/tok")


@pytest.fixture
def pbx(starface_sandbox: Callable[..., StarfaceSandboxHandle]) -> StarfaceSandboxHandle:
    handle = starface_sandbox(session_timeout=60.0)
    handle.add_user(LOGIN, PASSWORD, email="anna@example.com", oauth_allowed=True)
    return handle


@pytest.fixture
async def http(pbx: StarfaceSandboxHandle) -> AsyncIterator[aiohttp.ClientSession]:
    session = open_http(str(pbx.ca_file), timeout=aiohttp.ClientTimeout(total=5))
    yield session
    await session.close()


def legacy(http: aiohttp.ClientSession, pbx: StarfaceSandboxHandle, password: str = PASSWORD) -> UciClient:
    return UciClient(http, pbx.base_url, LegacyUciAuth(LOGIN, password), namespace=pbx.namespace)


def test_callback_target_from_public_base_url() -> None:
    target = CallbackTarget.from_base_url("https://bridge.example.com/pb/", "/starface/uci/abc")
    assert target == CallbackTarget("https", "bridge.example.com", 443, "/pb/starface/uci/abc")
    assert target.query() == {
        "de.vertico.starface.callback.host": "bridge.example.com",
        "de.vertico.starface.callback.port": "443",
        "de.vertico.starface.callback.path": "/pb/starface/uci/abc",
        "de.vertico.starface.callback.type": "https",
    }
    assert CallbackTarget.from_base_url("http://10.0.0.5:8080", "/x").port == 8080
    with pytest.raises(ValueError, match="http"):
        CallbackTarget.from_base_url("ftp://x", "/x")


async def test_login_registers_the_callback_and_subscribes_call_events(
    pbx: StarfaceSandboxHandle, http: aiohttp.ClientSession
) -> None:
    client = legacy(http, pbx)
    await client.login(CALLBACK)
    session = pbx.session(LOGIN)
    assert session is not None
    assert session["callbackUrl"].startswith("http://127.0.0.1:8099/starface/uci/tok?")
    assert session["subscriptions"] == [f"ucp.{pbx.namespace}.events.call"]
    await client.logout()
    assert pbx.session(LOGIN) is None
    await client.logout()  # logging out of a gone session is fine


async def test_dnd_round_trip(pbx: StarfaceSandboxHandle, http: aiohttp.ClientSession) -> None:
    client = legacy(http, pbx)
    await client.login(CALLBACK)
    await client.set_dnd(True)
    state = await client.user_state()
    assert state.dnd is True
    assert pbx.user(LOGIN)["dnd"] is True
    await client.set_dnd(False)
    assert (await client.user_state()).dnd is False
    history = pbx.history(LOGIN)["dnd"]
    assert [(e["value"], e["source"]) for e in history] == [(True, "uci"), (False, "uci")]


async def test_status_text_round_trip_with_umlauts_and_markup(
    pbx: StarfaceSandboxHandle, http: aiohttp.ClientSession
) -> None:
    client = legacy(http, pbx)
    await client.login(CALLBACK)
    text = 'Nicht Stören - In einer Präsentation <&> "x"'
    await client.set_status_text(text)
    state = await client.user_state()
    assert state.status_text == text
    assert pbx.history(LOGIN)["statusText"][-1]["value"] == text
    await client.set_status_text("")
    assert (await client.user_state()).status_text == ""


async def test_keepalive_until_the_pbx_drops_the_idle_session_then_relogin(
    pbx: StarfaceSandboxHandle, http: aiohttp.ClientSession
) -> None:
    client = legacy(http, pbx)
    await client.login(CALLBACK)
    pbx.advance(45)
    assert await client.keep_alive() is True
    pbx.advance(45)  # 45 s since the keepAlive: still inside the 60 s timeout
    assert await client.keep_alive() is True
    pbx.advance(61)
    assert await client.keep_alive() is False
    with pytest.raises(SessionExpired):
        await client.set_dnd(True)
    await client.login(CALLBACK)
    assert await client.keep_alive() is True
    await client.set_dnd(True)
    assert pbx.user(LOGIN)["dnd"] is True


async def test_calls_before_login_are_a_lost_session(
    pbx: StarfaceSandboxHandle, http: aiohttp.ClientSession
) -> None:
    with pytest.raises(SessionExpired) as caught:
        await legacy(http, pbx).user_state()
    assert caught.value.login == LOGIN


async def test_wrong_password_is_refused_by_login_and_never_shown(
    pbx: StarfaceSandboxHandle, http: aiohttp.ClientSession
) -> None:
    with pytest.raises(LoginRefused) as caught:
        await legacy(http, pbx, "not-the-password").login(CALLBACK)
    assert caught.value.login == LOGIN
    assert "not-the-password" not in str(caught.value)
    assert pbx.session(LOGIN) is None


async def test_jwt_auth_round_trip_and_token_refresh(
    starface_sandbox: Callable[..., StarfaceSandboxHandle],
) -> None:
    pbx = starface_sandbox(session_timeout=3600.0)
    pbx.add_user(LOGIN, PASSWORD, oauth_allowed=True)
    async with open_http(str(pbx.ca_file)) as http:
        grant = OAuthPasswordGrant(
            http, pbx.base_url, client_secret=pbx.oauth_client_secret, username=LOGIN, password=PASSWORD
        )
        client = UciClient(http, pbx.base_url, JwtUciAuth(grant), namespace=pbx.namespace)
        await client.login(CALLBACK)
        await client.set_dnd(True)
        # The access token lives 300 s on the PBX clock; ours has not moved, so the PBX answers
        # 401 and the client fetches a fresh token once and repeats the call.
        pbx.advance(301)
        await client.set_status_text("Im Gespräch")
        state = await client.user_state()
        assert (state.dnd, state.status_text) == (True, "Im Gespräch")


async def test_namespace_v22(starface_sandbox: Callable[..., StarfaceSandboxHandle]) -> None:
    pbx = starface_sandbox(namespace="v22")
    pbx.add_user(LOGIN, PASSWORD)
    async with open_http(str(pbx.ca_file)) as http:
        client = UciClient(http, pbx.base_url, LegacyUciAuth(LOGIN, PASSWORD), namespace="v22")
        await client.login(CALLBACK)
        assert pbx.session(LOGIN)["subscriptions"] == ["ucp.v22.events.call"]  # type: ignore[index]
        await client.set_dnd(True)
        assert (await client.user_state()).dnd is True
        wrong = UciClient(http, pbx.base_url, LegacyUciAuth(LOGIN, PASSWORD), namespace="v30")
        with pytest.raises(StarfaceUnavailable, match="STARFACE_UCI_NAMESPACE"):
            await wrong.login(CALLBACK)


async def test_pbx_errors_and_outages_are_unavailable(
    pbx: StarfaceSandboxHandle, http: aiohttp.ClientSession
) -> None:
    client = legacy(http, pbx)
    pbx.set_faults(errors=1)
    with pytest.raises(StarfaceUnavailable, match="HTTP 500"):
        await client.login(CALLBACK)
    pbx.set_faults(down="refuse")
    with pytest.raises(StarfaceUnavailable) as caught:
        await client.keep_alive()
    assert "auth" not in str(caught.value)  # no query string, so no token, in errors
    pbx.clear_faults()
    await client.login(CALLBACK)
    assert await client.keep_alive() is True


@pytest.mark.parametrize(
    ("text", "refused"),
    [
        ("Authentication failed", True),
        ("wrong password for user 0001", True),
        ("Anmeldung fehlgeschlagen", True),
        ("Invalid credentials", True),
        ("Access denied", True),
        ("No such handler: ucp.v30.requests.connection.login", False),
        ("java.lang.NullPointerException", False),
        ("", False),
    ],
)
def test_a_login_fault_counts_as_refused_only_when_it_names_authentication(text: str, refused: bool) -> None:
    from service.starface.uci import names_authentication

    assert names_authentication(text) is refused
