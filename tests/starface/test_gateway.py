"""The gateway interface: the UCI implementation behind it, used only through the Protocol."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from service.core.secretbox import SecretBox
from service.core.settings import Settings
from service.starface.credentials import CredentialStore
from service.starface.gateway import (
    CredentialsMissing,
    CredentialsUnreadable,
    GatewayError,
    LoginRefused,
    SessionExpired,
    StarfaceGateway,
    StarfaceUnavailable,
    UnknownUser,
    UserState,
)
from service.starface.rest import open_http
from service.starface.sessions import SessionManager
from tests.conftest import SECRET_KEY
from tests.fixtures.starface_sandbox import StarfaceSandboxHandle


async def apply(gateway: StarfaceGateway, login: str, dnd: bool, text: str) -> UserState:
    """What a reconciler does, written against the interface only."""
    await gateway.set_dnd(login, dnd)
    await gateway.set_status_text(login, text)
    return await gateway.read_state(login)


async def test_uci_sessions_implement_the_gateway(
    starface_sandbox: Callable[..., StarfaceSandboxHandle],
    redis_client: aioredis.Redis,
    make_settings: Callable[..., Settings],
) -> None:
    pbx = starface_sandbox()
    pbx.add_user("0001", "pw-1")
    settings = make_settings(STARFACE_BASE_URL=pbx.base_url, EXTRA_CA_FILE=str(pbx.ca_file))
    await CredentialStore(redis_client, SecretBox(SECRET_KEY)).put("0001", "pw-1")
    async with open_http(settings.extra_ca_file) as http:
        manager = SessionManager(redis_client, settings, http, callback_base_url="http://127.0.0.1:9")
        gateway: StarfaceGateway = manager
        assert isinstance(gateway, StarfaceGateway)
        await manager.sync(["0001"], now=time.time())
        state = await apply(gateway, "0001", True, "Nicht Stören")
        assert (state.login, state.dnd, state.status_text) == ("0001", True, "Nicht Stören")
        assert state.raw["telephonyState"] == "AVAILABLE"
        state = await apply(gateway, "0001", False, "Verfügbar")
        assert (state.dnd, state.status_text) == (False, "Verfügbar")
        assert [e["value"] for e in pbx.history("0001")["dnd"]] == [True, False]


def test_errors_are_small_types_carrying_data() -> None:
    errors: list[GatewayError] = [
        CredentialsMissing("0001"),
        CredentialsUnreadable("0002"),
        LoginRefused("0003", "OAuth grant refused"),
        SessionExpired("0004", fault_code=1),
        UnknownUser("0005"),
        StarfaceUnavailable("GET /rest/users: HTTP 503"),
    ]
    assert [getattr(e, "login", None) for e in errors] == ["0001", "0002", "0003", "0004", "0005", None]
    assert isinstance(errors[2], LoginRefused)
    assert errors[2].reason == "OAuth grant refused"
    assert isinstance(errors[3], SessionExpired)
    assert errors[3].fault_code == 1
    assert isinstance(errors[5], StarfaceUnavailable)
    assert errors[5].detail == "GET /rest/users: HTTP 503"
    assert "0003" in str(errors[2])


@pytest.mark.parametrize(
    ("answer", "dnd", "text"),
    [
        ({"doNotDisturb": True, "chatPresenceMessage": "x"}, True, "x"),
        ({"chatPresence": "AWAY"}, None, None),
        ({"doNotDisturb": "yes", "chatPresenceMessage": 5}, None, None),
    ],
)
def test_user_state_reads_what_the_pbx_said(
    answer: dict[str, Any], dnd: bool | None, text: str | None
) -> None:
    state = UserState.from_uci("0001", answer)
    assert (state.dnd, state.status_text, state.raw) == (dnd, text, answer)


def test_user_state_that_is_not_a_struct_is_unavailable() -> None:
    with pytest.raises(StarfaceUnavailable):
        UserState.from_uci("0001", True)
