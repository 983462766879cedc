"""Self-service enrolment: an employee stores their own STARFACE password, no admin handles it.

Behind ``CONSOLE_ENROLMENT``.  The employee signs in with Microsoft (no console role needed), sees
the STARFACE login whose e-mail matches their Entra account, and types the password once; a real
STARFACE login checks it before it is stored sealed.  They can withdraw it again.
"""

from __future__ import annotations

import contextlib

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from service.console.context import console_of, form_of, guarded, text_field
from service.console.signin_pages import microsoft_start
from service.core.settings import reveal
from service.starface.credentials import CredentialStore
from service.starface.directory import DirectoryStore
from service.starface.gateway import LoginRefused, StarfaceUnavailable
from service.starface.rest import RestClient, StarfaceUser


async def _matched(request: Request) -> StarfaceUser | None:
    """The STARFACE user for the signed-in employee: their e-mail (the UPN Entra signed in)."""
    console = console_of(request)
    who = request.state.session.who
    return await DirectoryStore(console.redis).by_email(who) if "@" in who else None


def _off(request: Request) -> Response | None:
    console = console_of(request)
    if not console.settings.console_enrolment:
        return console.render(request, "error.html", status=404, detail="not found")
    return None


async def start(request: Request) -> Response:
    return _off(request) or await microsoft_start(request, purpose="enrol")


async def page(request: Request, *, message: str = "", status: int = 200) -> Response:
    off = _off(request)
    if off is not None:
        return off
    console = console_of(request)
    user = await _matched(request)
    stored = False
    if user is not None:
        stored = user.login in set(await CredentialStore(console.redis, console.box).logins())
    return console.render(request, "enrol.html", status=status, user=user, stored=stored, message=message)


async def submit(request: Request) -> Response:
    off = _off(request)
    if off is not None:
        return off
    console = console_of(request)
    user = await _matched(request)
    if user is None:
        return await page(request, message="enrol.nomatch", status=404)
    form = form_of(request)
    password = text_field(form, "password", 1000)
    settings = console.settings
    store = CredentialStore(console.redis, console.box)
    who = request.state.session.who
    if form.get("action") == "withdraw":
        if await store.delete(user.login):
            await console.audit.write(who, "enrolment withdrawn", user.login, before="password set")
        return await page(request, message="enrol.withdrawn")
    if not password or not settings.starface_base_url:
        return await page(request, message="enrol.refused", status=400)
    client = RestClient(
        console.http,
        settings.starface_base_url,
        user.login,
        password,
        auth=settings.starface_auth,
        oauth_client_secret=reveal(settings.starface_oauth_client_secret),
    )
    try:
        await client.login()
    except LoginRefused:
        await console.audit.write(who, "enrolment refused by STARFACE", user.login)
        return await page(request, message="enrol.refused", status=400)
    except StarfaceUnavailable:
        return await page(request, message="enrol.unreachable")
    # The password is proven; an unanswered logout ends with the PBX's session timeout.
    with contextlib.suppress(StarfaceUnavailable):
        await client.logout()
    await store.put(user.login, password)
    await console.audit.write(who, "enrolled", user.login, after="password set")
    return await page(request, message="enrol.stored")


def routes() -> list[BaseRoute]:
    return [
        Route("/enrol/start", start),
        Route("/enrol", guarded(page, admin=False)),
        Route("/enrol", guarded(submit, admin=False), methods=["POST"]),
    ]
