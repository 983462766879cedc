"""The console tests run the whole bridge between the sandboxes, with the console on a loopback port.

``console_world`` is a ``DemoWorld`` whose bridge serves the console (break-glass account set),
``signed_in`` is an HTTP client with a console session, by break-glass or by Microsoft through the
Graph sandbox's Entra, exactly as a browser would walk the redirects.
"""

from __future__ import annotations

import html
import re
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.console.app import console_base_url
from service.core.passwords import hash_password
from service.sandbox.demo import CONSOLE_ADMIN, DemoWorld

BREAK_GLASS_USER = "rescue"
BREAK_GLASS_PASSWORD = "a long break-glass passphrase"
_HASH = hash_password(BREAK_GLASS_PASSWORD)
_HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')


def hidden_fields(page: str) -> dict[str, str]:
    return {html.unescape(k): html.unescape(v) for k, v in _HIDDEN.findall(page)}


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "no CSRF field on the page"
    return found.group(1)


@pytest.fixture
async def console_world(tmp_path: Path, redis_url: str) -> AsyncIterator[DemoWorld]:
    world = DemoWorld(
        tmp_path / "world",
        users=2,
        redis_url=redis_url,
        console=True,
        settings_overrides={"CONSOLE_ADMIN_USER": BREAK_GLASS_USER, "CONSOLE_ADMIN_PASSWORD_HASH": _HASH},
    )
    await world.start()
    await world.ready()
    yield world
    await world.close()


@pytest.fixture
def console_url(console_world: DemoWorld) -> str:
    assert console_world.settings is not None
    return console_base_url(console_world.settings)


async def microsoft_sign_in(
    client: httpx.AsyncClient, username: str, password: str, start: str
) -> httpx.Response:
    """Walk the redirects a browser walks: console -> Entra sign-in page -> console callback."""
    answer = await client.get(start)
    assert answer.status_code == 303, answer.text
    entra_page = await client.get(answer.headers["location"])
    assert entra_page.status_code == 200, entra_page.text
    form = {**hidden_fields(entra_page.text), "username": username, "password": password}
    answer = await client.post(str(entra_page.url), data=form)
    action = re.search(r'<form method="post" action="([^"]+)">', answer.text)
    if answer.status_code != 200 or action is None or "Working" not in answer.text:
        return answer
    # Entra's form_post page: the browser posts the code to the console's callback.
    return await client.post(html.unescape(action.group(1)), data=hidden_fields(answer.text))


@pytest.fixture
async def client_factory(console_world: DemoWorld, console_url: str) -> AsyncIterator[Callable[..., Any]]:
    assert console_world.settings is not None
    clients: list[httpx.AsyncClient] = []

    def make() -> httpx.AsyncClient:
        assert console_world.settings is not None
        trust = ssl.create_default_context(cafile=console_world.settings.extra_ca_file)
        client = httpx.AsyncClient(base_url=console_url, verify=trust, timeout=20)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


async def break_glass(client: httpx.AsyncClient) -> httpx.Response:
    page = await client.get("/login")
    fields = hidden_fields(page.text)
    return await client.post(
        "/login", data={**fields, "username": BREAK_GLASS_USER, "password": BREAK_GLASS_PASSWORD}
    )


@pytest.fixture
async def admin(
    client_factory: Callable[..., httpx.AsyncClient], console_world: DemoWorld
) -> httpx.AsyncClient:
    """A client signed in with Microsoft as the sandbox's console admin (app role assigned)."""
    client = client_factory()
    answer = await microsoft_sign_in(
        client, CONSOLE_ADMIN, console_world.password(CONSOLE_ADMIN), "/auth/microsoft"
    )
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/"
    return client
