"""The mapping page over HTTP: validation, preview, save, live switch in the workers, history."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import redis.asyncio as aioredis

from service.bridge.mapping_store import MappingStore
from service.core import keys
from service.sandbox.demo import DemoWorld
from tests.console.conftest import csrf_of

MEETING = "row.Busy/InAMeeting"


async def _form(admin: httpx.AsyncClient) -> dict[str, str]:
    """The mapping form as the browser would submit it unchanged (checked boxes as "on")."""
    import re

    page = (await admin.get("/mapping")).text
    form: dict[str, str] = {"csrf": csrf_of(page)}
    for name, value in re.findall(r'<input (?:id="[^"]*" )?name="([^"]+)"[^>]*value="([^"]*)"', page):
        form[name] = value
    for name in re.findall(r'<input type="checkbox" (?:id="[^"]*" )?name="([^"]+)"[^>]*checked', page):
        form[name] = "on"
    for name, value in re.findall(
        r'<select id="[^"]*" name="([^"]+)">.*?<option selected>([^<]+)<', page, re.S
    ):
        form[name] = value
    return form


async def test_an_invalid_mapping_is_not_saved_and_names_the_field(
    admin: httpx.AsyncClient, console_world: DemoWorld
) -> None:
    assert console_world._redis is not None
    store = MappingStore(console_world._redis)
    before = await store.current_number()
    form = await _form(admin)
    form["switch.call_end_debounce_seconds"] = "soon"
    form[f"{MEETING}.text"] = "two\tparts"
    answer = await admin.post("/mapping/save", data=form)
    assert answer.status_code == 400
    assert "switches.call_end_debounce_seconds must be a number of seconds" in answer.text
    assert "rows.&#34;Busy/InAMeeting&#34;.text must be a single line" in answer.text
    assert 'aria-invalid="true"' in answer.text
    assert await store.current_number() == before


async def test_toml_with_a_typo_is_refused_with_a_suggestion(admin: httpx.AsyncClient) -> None:
    page = (await admin.get("/mapping")).text
    answer = await admin.post(
        "/mapping/save", data={"csrf": csrf_of(page), "mode": "toml", "toml": "[switchs]\nset_dnd = true\n"}
    )
    assert answer.status_code == 400
    assert "did you mean switches" in answer.text


async def test_preview_lists_who_would_change_and_saves_nothing(
    admin: httpx.AsyncClient, console_world: DemoWorld
) -> None:
    anna = console_world.people[0]
    await console_world.set_teams(anna, "Busy", "InAMeeting")
    await console_world.expect_starface(anna, False, "Beschäftigt - In einem Meeting")
    assert console_world._redis is not None
    before = await MappingStore(console_world._redis).current_number()
    form = await _form(admin)
    form[f"{MEETING}.dnd"] = "on"
    answer = await admin.post("/mapping/preview", data=form)
    assert answer.status_code == 200
    preview = answer.text.split('id="preview"', 1)[1]
    assert anna.login in preview
    assert "DND off -&gt; on" in preview
    assert console_world.people[1].login not in preview
    assert await MappingStore(console_world._redis).current_number() == before


async def test_save_reaches_every_worker_without_a_restart(
    admin: httpx.AsyncClient, console_world: DemoWorld, redis_client: aioredis.Redis
) -> None:
    anna = console_world.people[0]
    await console_world.set_teams(anna, "Busy", "InAMeeting")
    await console_world.expect_starface(anna, False, "Beschäftigt - In einem Meeting")
    form = await _form(admin)
    form[f"{MEETING}.dnd"] = "on"
    form[f"{MEETING}.text"] = "Im Meeting"
    form["note"] = "meetings are quiet"
    started = time.monotonic()
    answer = await admin.post("/mapping/save", data=form)
    assert answer.status_code == 303
    number = int(answer.headers["location"].rsplit("=", 1)[1])
    # No new Teams event: the saved version alone re-reconciles Anna.
    await console_world.expect_starface(anna, True, "Im Meeting", within=5)
    print(f"\nsave -> applied in STARFACE {time.monotonic() - started:.2f} s")
    reconciler = console_world.runtimes[0].reconciler
    assert reconciler.mapping.source == f"mapping version {number}"

    history = await admin.get("/mapping/history")
    assert "meetings are quiet" in history.text
    version = await admin.get(f"/mapping/versions/{number}")
    assert "+&#34;Busy/InAMeeting&#34; = { dnd = true, text = &#34;Im Meeting&#34; }" in version.text

    restored = await admin.post(
        f"/mapping/versions/{number - 1}/restore", data={"csrf": csrf_of(version.text)}
    )
    assert restored.status_code == 303
    await console_world.expect_starface(anna, False, "Beschäftigt - In einem Meeting", within=5)
    audit = (await admin.get("/audit")).text
    assert "mapping saved" in audit
    assert "mapping rolled back" in audit
    assert int(await redis_client.hlen(keys.MAPPING_VERSIONS)) == number + 1


async def test_export_as_toml_over_http_and_cli(admin: httpx.AsyncClient, console_world: DemoWorld) -> None:
    answer = await admin.get("/mapping/export")
    assert answer.status_code == 200
    assert "[switches]" in answer.text
    env = console_world.environment()
    cli = subprocess.run(
        [sys.executable, "-m", "service.cli.main", "mapping", "export"],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout == answer.text
    missing = subprocess.run(
        [sys.executable, "-m", "service.cli.main", "mapping", "export", "--version", "99"],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2
    assert "mapping version 99 does not exist" in missing.stderr
