"""Who may use the console, and how every refusal looks."""

from __future__ import annotations

import ssl
from collections.abc import Callable

import httpx

from service.console.sessions import COOKIE
from service.sandbox.demo import DemoWorld
from tests.console.conftest import BREAK_GLASS_USER, break_glass, csrf_of, hidden_fields, microsoft_sign_in


async def test_microsoft_sign_in_with_the_role_opens_the_overview(admin: httpx.AsyncClient) -> None:
    page = await admin.get("/")
    assert page.status_code == 200
    assert 'id="verdict"' in page.text
    cookie = next(c for c in admin.cookies.jar if c.name == COOKIE)
    assert cookie.has_nonstandard_attr("HttpOnly")


async def test_unauthenticated_is_sent_to_sign_in(client_factory: Callable[[], httpx.AsyncClient]) -> None:
    client = client_factory()
    for path in ("/", "/users", "/mapping", "/credentials", "/dead-letters", "/audit", "/accounts"):
        answer = await client.get(path)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/login?next="), path


async def test_a_user_without_the_role_gets_403(
    client_factory: Callable[[], httpx.AsyncClient], console_world: DemoWorld
) -> None:
    client = client_factory()
    anna = console_world.people[0]
    answer = await microsoft_sign_in(
        client, anna.email, console_world.password(anna.email), "/auth/microsoft"
    )
    assert answer.status_code == 303
    page = await client.get("/users")
    assert page.status_code == 403
    assert "app role" in page.text


async def test_a_wrong_entra_password_signs_nobody_in(
    client_factory: Callable[[], httpx.AsyncClient], console_world: DemoWorld
) -> None:
    client = client_factory()
    answer = await microsoft_sign_in(client, "admin@demo.example", "wrong", "/auth/microsoft")
    assert answer.status_code == 200
    assert "Sign-in failed" in answer.text
    assert (await client.get("/")).status_code == 303


async def test_a_replayed_or_forged_callback_is_refused(
    client_factory: Callable[[], httpx.AsyncClient],
) -> None:
    client = client_factory()
    answer = await client.get("/auth/callback", params={"code": "x", "state": "made-up"})
    assert answer.status_code == 303
    assert "unknown" in httpx.URL(answer.headers["location"]).params["error"]


async def test_break_glass_sign_in_and_wrong_password(
    client_factory: Callable[[], httpx.AsyncClient],
) -> None:
    client = client_factory()
    page = await client.get("/login")
    wrong = await client.post(
        "/login", data={**hidden_fields(page.text), "username": BREAK_GLASS_USER, "password": "no"}
    )
    assert wrong.status_code == 401
    assert "wrong password" in wrong.text
    right = await break_glass(client)
    assert right.status_code == 303
    assert (await client.get("/")).status_code == 200


async def test_login_form_without_its_csrf_cookie_is_refused(
    client_factory: Callable[[], httpx.AsyncClient],
) -> None:
    client = client_factory()
    answer = await client.post(
        "/login", data={"login_csrf": "x", "username": BREAK_GLASS_USER, "password": "y"}
    )
    assert answer.status_code == 403


async def test_a_post_without_a_valid_csrf_token_is_refused_and_changes_nothing(
    admin: httpx.AsyncClient,
) -> None:
    before = await admin.get("/credentials")
    for token in ("", "forged"):
        answer = await admin.post("/credentials/set", data={"csrf": token, "login": "0001", "password": "p"})
        assert answer.status_code == 403
    audit = await admin.get("/audit")
    assert "credentials set" not in audit.text
    assert csrf_of(before.text)


async def test_sign_out_ends_the_session_everywhere(admin: httpx.AsyncClient) -> None:
    page = await admin.get("/")
    cookie = admin.cookies.get(COOKIE)
    assert (await admin.post("/logout", data={"csrf": csrf_of(page.text)})).status_code == 303
    replay = httpx.AsyncClient(base_url=str(admin.base_url), cookies={COOKIE: cookie or ""})
    try:
        assert (await replay.get("/")).status_code == 303
    finally:
        await replay.aclose()


async def test_a_forged_cookie_is_no_session(client_factory: Callable[[], httpx.AsyncClient]) -> None:
    client = client_factory()
    client.cookies.set(COOKIE, "abc.def")
    assert (await client.get("/")).status_code == 303


async def test_open_redirects_are_not_followed(client_factory: Callable[[], httpx.AsyncClient]) -> None:
    client = client_factory()
    page = await client.get("/login", params={"next": "//evil.example/x"})
    assert hidden_fields(page.text)["next"] == "/"


async def test_security_headers_on_every_page(client_factory: Callable[[], httpx.AsyncClient]) -> None:
    client = client_factory()
    page = await client.get("/login")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cache-control"] == "no-store"


async def test_the_public_port_answers_404_for_every_console_path(console_world: DemoWorld) -> None:
    assert console_world.settings is not None
    trust = ssl.create_default_context(cafile=console_world.settings.extra_ca_file)
    async with httpx.AsyncClient(base_url=console_world.settings.public_base_url, verify=trust) as public:
        for path in ("/login", "/users", "/mapping", "/auth/callback", "/enrol", "/static/console.css"):
            assert (await public.get(path)).status_code == 404, path
