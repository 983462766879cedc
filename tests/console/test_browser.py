"""The console in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

The walk an administrator takes: sign in with Microsoft through the sandbox Entra, see the users,
switch DND on for Busy/InAMeeting and save; a Teams meeting then turns DND on in the STARFACE
sandbox and the users table shows it by itself.  Screenshots of every page are kept under
``test-output/browser/`` (``BROWSER_OUTPUT`` overrides), for people to look at.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

from service.sandbox.demo import CONSOLE_ADMIN, DemoWorld

pytestmark = pytest.mark.slow

OUTPUT = Path(
    os.environ.get("BROWSER_OUTPUT", Path(__file__).resolve().parents[2] / "test-output" / "browser")
)


def _chromium() -> str:
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("no chromium on PATH: apt-get install -y chromium (the browser tests need it)")
    return found


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as driver:
        launched = await driver.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        yield launched
        await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    # The sandboxes' certificates come from their own throwaway CA, which Chromium does not know.
    context = await browser.new_context(ignore_https_errors=True, locale="en-GB")
    opened = await context.new_page()
    dialogs: list[str] = []
    opened.on("dialog", lambda dialog: dialogs.append(dialog.message))
    opened.dialogs = dialogs  # type: ignore[attr-defined]
    yield opened
    await context.close()


async def shot(page: Page, name: str) -> None:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(OUTPUT / f"{name}.png"), full_page=True)


async def sign_in(page: Page, world: DemoWorld, console_url: str) -> None:
    await page.goto(console_url + "/")
    assert "/login" in page.url
    await shot(page, "01-sign-in")
    await page.click("#microsoft")
    await page.fill("input[name=username]", CONSOLE_ADMIN)
    await page.fill("input[name=password]", world.password(CONSOLE_ADMIN))
    await page.click("button[type=submit]")
    await page.wait_for_selector("#verdict")
    assert page.url.rstrip("/") == console_url


async def test_dnd_for_meetings_reaches_starface_and_the_users_table(
    page: Page, console_world: DemoWorld, console_url: str
) -> None:
    world = console_world
    anna = world.people[0]
    await sign_in(page, world, console_url)
    await shot(page, "02-overview")

    await page.goto(console_url + "/users")
    row = page.locator(f'tr[data-login="{anna.login}"]')
    await row.wait_for()
    assert anna.email in await row.inner_text()
    await shot(page, "03-users")

    await page.goto(console_url + "/mapping")
    await page.check('input[name="row.Busy/InAMeeting.dnd"]')
    await shot(page, "04-mapping")
    await page.click("#save-button")
    await page.wait_for_selector("#saved")
    saved_at = time.monotonic()

    await world.set_teams(anna, "Busy", "InAMeeting")
    await world.expect_starface(anna, True, "Beschäftigt - In einem Meeting", within=15)
    in_starface = time.monotonic()

    await page.goto(console_url + "/users")
    await page.locator(f'tr[data-login="{anna.login}"] td.dnd').wait_for()
    # The table refreshes itself: no reload from here on.
    await world.set_teams(anna, "Available", "Available")
    await world.expect_starface(anna, False, "Verfügbar", within=15)
    changed = time.monotonic()
    await page.wait_for_function(
        "login => document.querySelector(`tr[data-login='${login}'] td.dnd`).textContent.trim() === 'off'",
        arg=anna.login,
        timeout=2000,
    )
    shown = time.monotonic()
    await shot(page, "05-users-live")
    print(
        f"\nsave -> STARFACE DND on {in_starface - saved_at:.2f} s; "
        f"STARFACE applied -> users table {shown - changed:.2f} s"
    )

    await page.goto(console_url + f"/users/{anna.login}")
    await page.wait_for_selector("article.decision")
    await shot(page, "06-user")
    for name, path in (
        ("07-history", "/mapping/history"),
        ("08-accounts", "/accounts"),
        ("09-credentials", "/credentials"),
        ("10-dead-letters", "/dead-letters"),
        ("11-audit", "/audit"),
    ):
        await page.goto(console_url + path)
        await shot(page, name)
    assert "mapping saved" in await page.inner_text("#audit")


async def test_html_in_texts_and_queries_renders_as_text(
    page: Page, console_world: DemoWorld, console_url: str
) -> None:
    world = console_world
    anna = world.people[0]
    probe = '<img src=x onerror="alert(1)"><script>alert(2)</script>'
    await sign_in(page, world, console_url)
    await page.goto(console_url + "/mapping")
    await page.fill('input[name="row.Busy/InAMeeting.text"]', probe)
    await page.click("#save-button")
    await page.wait_for_selector("#saved")
    await world.set_teams(anna, "Busy", "InAMeeting")
    await world.expect_starface(anna, False, probe, within=15)
    await page.goto(console_url + "/users?q=" + "%3Cscript%3Ealert(3)%3C%2Fscript%3E")
    await page.goto(console_url + "/users")
    await page.wait_for_function(
        "login => document.querySelector(`tr[data-login='${login}'] td.text`)"
        ".textContent.includes('<script>')",
        arg=anna.login,
        timeout=5000,
    )
    await page.goto(console_url + "/mapping/history")
    await page.goto(console_url + "/audit")
    await shot(page, "12-xss-probe")
    assert page.dialogs == []  # type: ignore[attr-defined]


async def test_german_is_chosen_by_the_browser_and_switchable(
    browser: Browser, console_world: DemoWorld, console_url: str
) -> None:
    context = await browser.new_context(ignore_https_errors=True, locale="de-DE")
    german = await context.new_page()
    try:
        await german.goto(console_url + "/login")
        assert await german.inner_text("h1") == "Anmelden"
        await german.click("text=English")
        assert await german.inner_text("h1") == "Sign in"
        # Keyboard only: the sign-in link is reachable and labelled.
        await german.keyboard.press("Tab")
        focused = await german.evaluate("document.activeElement.textContent")
        assert focused
    finally:
        await context.close()
