"""Credentials, dead letters, service accounts and enrolment through the console over HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import redis.asyncio as aioredis

from service.bridge import deadletters
from service.core import keys
from service.sandbox.demo import DemoWorld
from tests.console.conftest import csrf_of, microsoft_sign_in

SECRET = "Very-Secret-Passw0rd"


async def _csrf(client: httpx.AsyncClient, path: str = "/credentials") -> str:
    return csrf_of((await client.get(path)).text)


async def test_csv_with_one_bad_row_imports_nothing_and_names_the_row(
    admin: httpx.AsyncClient, redis_client: aioredis.Redis
) -> None:
    before = await redis_client.hkeys(keys.STARFACE_CREDENTIALS)
    data = f"login,password\n0009,{SECRET}\nbad login,{SECRET}\n".encode()
    answer = await admin.post(
        "/credentials/import",
        data={"csrf": await _csrf(admin)},
        files={"file": ("c.csv", data, "text/csv")},
    )
    assert answer.status_code == 400
    assert "line 3" in answer.text
    assert SECRET not in answer.text
    assert sorted(await redis_client.hkeys(keys.STARFACE_CREDENTIALS)) == sorted(before)


async def test_csv_import_set_and_delete_never_show_the_secret(
    admin: httpx.AsyncClient, redis_client: aioredis.Redis
) -> None:
    data = f"login,password\n0009,{SECRET}\n0010,{SECRET}\n".encode()
    answer = await admin.post(
        "/credentials/import", data={"csrf": await _csrf(admin)}, files={"file": ("c.csv", data, "text/csv")}
    )
    assert answer.status_code == 200
    assert await redis_client.hexists(keys.STARFACE_CREDENTIALS, "0009")
    stored = await redis_client.hget(keys.STARFACE_CREDENTIALS, "0009")
    assert SECRET.encode() not in (stored or b"")  # sealed at rest
    answer = await admin.post(
        "/credentials/set", data={"csrf": await _csrf(admin), "login": "0011", "password": SECRET}
    )
    assert answer.status_code == 200
    answer = await admin.post(
        "/credentials/set", data={"csrf": await _csrf(admin), "login": "a b", "password": "x"}
    )
    assert answer.status_code == 400
    assert "spaces" in answer.text
    answer = await admin.post("/credentials/delete", data={"csrf": await _csrf(admin), "login": "0010"})
    assert answer.status_code == 303
    assert not await redis_client.hexists(keys.STARFACE_CREDENTIALS, "0010")
    audit = (await admin.get("/audit")).text
    assert "credentials imported" in audit
    assert "credentials deleted" in audit
    for page in ("/credentials", "/audit", "/users"):
        assert SECRET not in (await admin.get(page)).text


async def test_dead_letters_list_replay_and_purge(
    admin: httpx.AsyncClient, redis_client: aioredis.Redis
) -> None:
    async with redis_client.pipeline(transaction=True) as pipe:
        for number in range(3):
            deadletters.add(
                pipe,
                stream=keys.call_stream(0),
                entry_id=f"1-{number}",
                reason="bad call event <b>",
                deliveries=5,
                fields={"login": "0001", "state": "?"},
            )
        await pipe.execute()
    page = await admin.get("/dead-letters")
    assert page.text.count("bad call event &lt;b&gt;") == 3
    entries: Any = await redis_client.xrange(keys.DEAD_LETTER_STREAM)
    one = entries[0][0].decode()
    assert (
        await admin.post("/dead-letters/replay", data={"csrf": csrf_of(page.text), "id": one})
    ).status_code == 303
    assert await redis_client.xlen(keys.DEAD_LETTER_STREAM) == 2
    unknown = await admin.post("/dead-letters/purge", data={"csrf": csrf_of(page.text), "id": "9-9"})
    assert unknown.status_code == 404
    assert (
        await admin.post("/dead-letters/purge", data={"csrf": csrf_of(page.text), "id": "all"})
    ).status_code == 303
    assert await redis_client.xlen(keys.DEAD_LETTER_STREAM) == 0
    assert "dead letters purged" in (await admin.get("/audit")).text


async def test_service_account_sign_in_by_device_code_from_the_browser(
    admin: httpx.AsyncClient, console_world: DemoWorld
) -> None:
    from service.sandbox.demo import SERVICE_ACCOUNT

    page = await admin.get("/accounts")
    assert SERVICE_ACCOUNT in page.text
    answer = await admin.post(
        "/accounts/sign-in", data={"csrf": csrf_of(page.text), "account": SERVICE_ACCOUNT}
    )
    assert answer.status_code == 303
    flow: dict[str, str] = {}
    for _ in range(100):
        flow = (await admin.get("/accounts/sign-in/status")).json().get(SERVICE_ACCOUNT, {})
        if flow.get("state") == "waiting":
            break
        await __import__("asyncio").sleep(0.1)
    assert flow.get("state") == "waiting", flow
    code = flow["message"].split("enter the code ")[1].split()[0]
    assert console_world.graph is not None
    account = console_world.graph.entra.find_account(SERVICE_ACCOUNT)
    assert account is not None
    console_world.graph.entra.approve_device_code(code, account.id)
    for _ in range(100):
        flow = (await admin.get("/accounts/sign-in/status")).json()[SERVICE_ACCOUNT]
        if flow["state"] != "waiting":
            break
        await __import__("asyncio").sleep(0.1)
    assert flow["state"] == "done", flow
    assert "service account signed in" in (await admin.get("/audit")).text
    refused = await admin.post("/accounts/sign-in", data={"csrf": csrf_of(page.text), "account": "x@y"})
    assert refused.status_code == 400


async def test_enrolment_checks_the_password_with_starface_and_can_be_withdrawn(
    client_factory: Callable[[], httpx.AsyncClient], console_world: DemoWorld, redis_client: aioredis.Redis
) -> None:
    anna = console_world.people[0]
    await redis_client.hdel(keys.STARFACE_CREDENTIALS, anna.login)
    client = client_factory()
    answer = await microsoft_sign_in(client, anna.email, console_world.password(anna.email), "/enrol/start")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/enrol"
    page = await client.get("/enrol")
    assert anna.login in page.text
    wrong = await client.post(
        "/enrol", data={"csrf": csrf_of(page.text), "password": "wrong", "action": "store"}
    )
    assert wrong.status_code == 400
    assert "refused" in wrong.text
    assert not await redis_client.hexists(keys.STARFACE_CREDENTIALS, anna.login)
    right = await client.post(
        "/enrol",
        data={"csrf": csrf_of(page.text), "password": console_world.password(anna.login), "action": "store"},
    )
    assert right.status_code == 200
    assert "is stored" in right.text
    assert await redis_client.hexists(keys.STARFACE_CREDENTIALS, anna.login)
    assert console_world.password(anna.login) not in right.text
    gone = await client.post("/enrol", data={"csrf": csrf_of(page.text), "action": "withdraw"})
    assert "deleted" in gone.text
    assert not await redis_client.hexists(keys.STARFACE_CREDENTIALS, anna.login)
    # An enrolled employee has no console role: the admin pages stay closed.
    assert (await client.get("/credentials")).status_code == 403
    audit: Any = await redis_client.xrange(keys.CONSOLE_AUDIT)
    assert console_world.password(anna.login) not in json.dumps([str(e) for e in audit])


async def test_users_page_search_filter_and_user_page(
    admin: httpx.AsyncClient, console_world: DemoWorld
) -> None:
    anna, ben = console_world.people[:2]
    page = await admin.get("/users", params={"q": "anna"})
    assert anna.login in page.text
    assert f'data-login="{ben.login}"' not in page.text
    await console_world.set_teams(ben, "DoNotDisturb", "DoNotDisturb")
    await console_world.expect_starface(ben, True, "Nicht Stören")
    dnd = await admin.get("/users/rows", params={"show": "dnd-on"})
    assert f'data-login="{ben.login}"' in dnd.text
    assert f'data-login="{anna.login}"' not in dnd.text
    detail = await admin.get(f"/users/{ben.login}")
    assert "DoNotDisturb" in detail.text
    assert 'class="decision"' in detail.text
    assert "policy respect (STARFACE_DND_POLICY)" in detail.text
    assert "in the last hour (at most 6 per STARFACE_REWRITES_PER_HOUR)" in detail.text
    assert (await admin.get("/users/nobody")).status_code == 404
    assert (await admin.get("/users", params={"show": "bogus", "page": "x"})).status_code == 200


async def test_html_in_a_starface_name_renders_as_text(
    admin: httpx.AsyncClient, redis_client: aioredis.Redis
) -> None:
    entry = {
        "id": 77,
        "login": "0077",
        "email": "x@demo.example",
        "first_name": "<script>alert(1)</script>",
        "family_name": "<b>",
        "groups": [],
    }
    await redis_client.hset(keys.STARFACE_DIRECTORY, "0077", json.dumps(entry, sort_keys=True))
    page = await admin.get("/users", params={"q": "0077"})
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &lt;b&gt;" in page.text
    assert "<script>alert(1)" not in page.text
