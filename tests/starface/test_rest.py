"""REST client: the login formulas by hand, and everything else against the STARFACE sandbox."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from service.starface import protocol as sp
from service.starface.gateway import LoginRefused, StarfaceUnavailable
from service.starface.rest import (
    OAuthPasswordGrant,
    RestClient,
    StarfaceGroup,
    StarfaceUser,
    find_group,
    open_http,
)
from tests.fixtures.starface_sandbox import StarfaceSandboxHandle

# sha512sum of the strings below, computed in a shell, not with the code under test:
#   printf '%s' geheim | sha512sum
PASSWORD_HASH = (
    "8d847e01d22baa969f71fa362b4de21c9e13c7882bcea13ba5c6a8ae0d71fc8c"
    "9700c82e0087a65c8b37bd29f536747f28c9672bec1cae7762d2c9f36b6013f2"
)
#   printf '%s' "0001pds24hmip1ctbogn1l8ujvs5u4$PASSWORD_HASH" | sha512sum
REST_SECRET_HASH = (
    "f85f045bf2d2a03fb5e7ae5ddaa474735cfdd9242471e672d6720a04a0a8982d"
    "e0358aa4e0b62cc24e29e4e7c647a3e8090ac0911408998871990c6e021cf737"
)
#   printf '%s' "0001*$PASSWORD_HASH" | sha512sum
UCI_TOKEN_HASH = (
    "d67dc2baa2f1d4f61394ac18e062edb5e508fb0ca08894c5b2ea19f439e6bc0b"
    "8a73a8a1bc3dcfdc37667af730d98b550af00fcdd169c598939e19be2b243d48"
)
NONCE = "pds24hmip1ctbogn1l8ujvs5u4"  # the nonce of the STARFACE documentation's example


def test_rest_login_secret_matches_the_hand_computed_value() -> None:
    assert sp.rest_login_secret("0001", "geheim", NONCE) == f"0001:{REST_SECRET_HASH}"


def test_uci_token_matches_the_hand_computed_value() -> None:
    assert sp.uci_auth_token("0001", "geheim") == f"0001:{UCI_TOKEN_HASH}"


def test_formulas_differ_only_by_the_star_and_are_lower_case_hex() -> None:
    inner = hashlib.sha512(b"pw").hexdigest()
    rest = sp.rest_login_secret("42", "pw", "n")
    uci = sp.uci_auth_token("42", "pw")
    assert rest == "42:" + hashlib.sha512(f"42n{inner}".encode()).hexdigest()
    assert uci == "42:" + hashlib.sha512(f"42*{inner}".encode()).hexdigest()
    assert rest.split(":")[1] == rest.split(":")[1].lower()


class ManualClock:
    """The client's own monotonic clock, moved by the test (the PBX has its own)."""

    def __init__(self) -> None:
        self.value = 1000.0

    def __call__(self) -> float:
        return self.value


ADMIN, ADMIN_PW = "0100", "admin-pw-Ø1"


@pytest.fixture
def pbx(starface_sandbox: Callable[..., StarfaceSandboxHandle]) -> StarfaceSandboxHandle:
    handle = starface_sandbox()
    handle.add_user(ADMIN, ADMIN_PW, email="admin@example.com", first_name="Ada", oauth_allowed=True)
    handle.add_user("0001", "pw1", email="Anna@Example.com", first_name="Anna", family_name="Alpha")
    handle.add_user("0002", "pw2", email="bob@example.com", first_name="Bob", family_name="Beta")
    return handle


@pytest.fixture
async def http(pbx: StarfaceSandboxHandle) -> AsyncIterator[aiohttp.ClientSession]:
    session = open_http(str(pbx.ca_file), timeout=aiohttp.ClientTimeout(total=5))
    yield session
    await session.close()


async def test_legacy_login_reads_users_groups_and_members(
    pbx: StarfaceSandboxHandle, http: aiohttp.ClientSession
) -> None:
    group = pbx.add_group("Vertrieb", ["0001"])
    pbx.add_group("Technik", ["0002", ADMIN])
    rest = RestClient(http, pbx.base_url, ADMIN, ADMIN_PW)
    users = await rest.users()
    by_login = {u.login: u for u in users}
    assert set(by_login) == {ADMIN, "0001", "0002"}
    anna = by_login["0001"]
    assert (anna.email, anna.first_name, anna.family_name) == ("Anna@Example.com", "Anna", "Alpha")
    assert isinstance(anna.id, int)
    groups = await rest.groups()
    assert {g.name for g in groups} == {"Vertrieb", "Technik"}
    found = find_group(groups, "vertrieb")
    assert found is not None
    assert found.id == group["id"]
    assert await rest.group_member_ids(found.id) == frozenset({anna.id})
    await rest.logout()
    assert not rest.logged_in


async def test_wrong_admin_password_is_refused_by_login_without_the_password(
    pbx: StarfaceSandboxHandle, http: aiohttp.ClientSession
) -> None:
    rest = RestClient(http, pbx.base_url, ADMIN, "wrong-password-123")
    with pytest.raises(LoginRefused) as caught:
        await rest.users()
    assert caught.value.login == ADMIN
    assert "wrong-password-123" not in str(caught.value)


async def test_token_is_renewed_before_its_lifetime_ends(
    pbx: StarfaceSandboxHandle, http: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    rest = RestClient(http, pbx.base_url, ADMIN, ADMIN_PW, clock=clock)
    await rest.users()
    first = rest._token
    clock.value += sp.REST_TOKEN_RENEW_AFTER_SECONDS - 1
    await rest.users()
    assert rest._token == first
    clock.value += 2
    pbx.advance(sp.REST_TOKEN_RENEW_AFTER_SECONDS + 1)  # the PBX has not expired it yet either
    await rest.users()
    assert rest._token != first


async def test_expired_token_gets_401_then_a_fresh_login(
    pbx: StarfaceSandboxHandle, http: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    rest = RestClient(http, pbx.base_url, ADMIN, ADMIN_PW, clock=clock)
    await rest.users()
    first = rest._token
    pbx.advance(sp.REST_TOKEN_LIFETIME_SECONDS + 1)  # the client's clock still thinks it is fresh
    assert len(await rest.users()) == 3
    assert rest._token != first


async def test_pbx_restart_forgets_tokens_and_the_client_recovers(
    pbx: StarfaceSandboxHandle, http: aiohttp.ClientSession
) -> None:
    rest = RestClient(http, pbx.base_url, ADMIN, ADMIN_PW)
    await rest.users()
    pbx.restart()
    assert {u.login for u in await rest.users()} == {ADMIN, "0001", "0002"}


async def test_oauth_bearer_reads_users_and_refreshes_on_expiry(
    pbx: StarfaceSandboxHandle, http: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    rest = RestClient(
        http,
        pbx.base_url,
        ADMIN,
        ADMIN_PW,
        auth="oauth",
        oauth_client_secret=pbx.oauth_client_secret,
        clock=clock,
    )
    assert len(await rest.users()) == 3
    # Both clocks move past the 300 s access lifetime: the client renews ahead (refresh grant).
    clock.value += 290
    pbx.advance(290)
    assert len(await rest.users()) == 3
    # Only the PBX clock moves: the PBX refuses the token, the client gets a new one and retries.
    pbx.advance(400)
    assert len(await rest.users()) == 3


async def test_oauth_wrong_client_secret_is_refused(
    pbx: StarfaceSandboxHandle, http: aiohttp.ClientSession
) -> None:
    grant = OAuthPasswordGrant(http, pbx.base_url, client_secret="nope", username=ADMIN, password=ADMIN_PW)
    with pytest.raises(LoginRefused) as caught:
        await grant.access_token()
    assert caught.value.login == ADMIN


async def test_oauth_user_without_the_permission_is_refused(
    pbx: StarfaceSandboxHandle, http: aiohttp.ClientSession
) -> None:
    grant = OAuthPasswordGrant(
        http, pbx.base_url, client_secret=pbx.oauth_client_secret, username="0001", password="pw1"
    )
    with pytest.raises(LoginRefused):
        await grant.access_token()


async def test_pbx_down_is_unavailable_quickly(
    pbx: StarfaceSandboxHandle, http: aiohttp.ClientSession
) -> None:
    rest = RestClient(http, pbx.base_url, ADMIN, ADMIN_PW)
    pbx.set_faults(down="refuse")
    started = time.monotonic()
    with pytest.raises(StarfaceUnavailable) as caught:
        await rest.users()
    assert time.monotonic() - started < 3
    assert pbx.base_url not in str(caught.value)
    pbx.set_faults(down="503")
    with pytest.raises(StarfaceUnavailable, match="HTTP 503"):
        await rest.users()
    pbx.clear_faults()
    assert len(await rest.users()) == 3


async def test_slow_pbx_times_out_instead_of_hanging(pbx: StarfaceSandboxHandle) -> None:
    pbx.set_faults(slow_seconds=3)
    async with open_http(str(pbx.ca_file), timeout=aiohttp.ClientTimeout(total=0.3)) as http:
        rest = RestClient(http, pbx.base_url, ADMIN, ADMIN_PW)
        started = time.monotonic()
        with pytest.raises(StarfaceUnavailable, match="TimeoutError"):
            await rest.users()
        assert time.monotonic() - started < 2


async def test_without_the_sandbox_ca_tls_is_refused(pbx: StarfaceSandboxHandle) -> None:
    async with open_http(None) as http:
        with pytest.raises(StarfaceUnavailable):
            await RestClient(http, pbx.base_url, ADMIN, ADMIN_PW).users()


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        (
            {"id": 5, "login": "0005", "email": " e@x.de ", "firstName": "E"},
            StarfaceUser(5, "0005", "e@x.de", "E"),
        ),
        ({"id": "6", "login": 6, "email": None}, StarfaceUser(6, "6", "")),
        ({"id": None, "login": "x"}, None),
        ({"id": 7, "login": "  "}, None),
        ("not an object", None),
    ],
)
def test_user_objects_are_read_defensively(item: Any, expected: StarfaceUser | None) -> None:
    assert StarfaceUser.from_rest(item) == expected


def test_find_group_by_id_exact_name_or_single_case_blind_match() -> None:
    groups = [StarfaceGroup(1, "Sales"), StarfaceGroup(2, "sales"), StarfaceGroup(3, "Support")]
    assert find_group(groups, "2") == groups[1]
    assert find_group(groups, "Sales") == groups[0]
    assert find_group(groups, "SUPPORT") == groups[2]
    assert find_group(groups, "SALES") is None  # two case-blind matches: ambiguous
    assert find_group(groups, "Nope") is None


def test_rest_client_refuses_oauth_without_client_secret() -> None:
    with pytest.raises(ValueError, match="client secret"):
        RestClient(None, "https://pbx", "1", "pw", auth="oauth")  # type: ignore[arg-type]


async def test_a_large_directory_answer_is_read_whole(
    pbx: StarfaceSandboxHandle, http: aiohttp.ClientSession
) -> None:
    # Over TLS an answer arrives in pieces; reading it must not stop at the first ones.
    for index in range(70):
        pbx.add_user(f"2{index:03d}", "pw", email=f"u{index}@example.com", first_name="N" * 3000)
    users = await RestClient(http, pbx.base_url, ADMIN, ADMIN_PW).users()
    assert len(users) == 73
    assert all(u.first_name == "N" * 3000 for u in users if u.login.startswith("2"))
