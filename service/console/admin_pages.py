"""The steering pages: service accounts (device-code sign-in), STARFACE credentials, dead letters.

Passwords go from the form into the sealed store and nowhere else: not into the page, the log or
the audit log, which records only that a password was set or deleted.
"""

from __future__ import annotations

import asyncio
import json
import logging

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from service.bridge.deadletters import DeadLetters, UnknownDeadLetter
from service.console.context import Console, console_of, form_of, text_field
from service.core import keys
from service.core.storage import decoded
from service.ops.status import uci_sessions
from service.starface.credentials import (
    MAX_FILE_BYTES,
    CredentialsFileError,
    CredentialStore,
    login_problem,
    parse_csv,
)
from service.starface.directory import DirectoryStore
from service.starface.sessions import KIND_LOGIN_REFUSED
from subscriptions.accounts import ServiceAccounts
from subscriptions.tokens import TokenError, Tokens

log = logging.getLogger(__name__)
DEVICE_FLOW_SECONDS = 900


# -- service accounts ------------------------------------------------------------------------------


async def accounts(request: Request) -> Response:
    console = console_of(request)
    settings = console.settings
    health = await ServiceAccounts(console.redis, console.box, settings.graph_service_accounts).health()
    return console.render(
        request,
        "accounts.html",
        accounts=settings.graph_service_accounts,
        health=health,
        flows=await _flows(console),
    )


async def _flows(console: Console) -> dict[str, dict[str, str]]:
    """The device-code sign-ins started from the console, by account, in one round trip."""
    accounts = console.settings.graph_service_accounts
    raw = await console.redis.mget([keys.console_device_flow(a) for a in accounts]) if accounts else []
    return {
        account: json.loads(decoded(value)) for account, value in zip(accounts, raw, strict=True) if value
    }


async def _device_sign_in(console: Console, account: str, who: str) -> None:
    key = keys.console_device_flow(account)
    tokens = Tokens.from_settings(console.redis, console.settings)
    shown: asyncio.Queue[str] = asyncio.Queue()

    async def publish(record: dict[str, str]) -> None:
        await console.redis.set(key, json.dumps(record), ex=DEVICE_FLOW_SECONDS)

    async def relay() -> None:
        message = await shown.get()
        await publish({"state": "waiting", "message": message})

    relaying = asyncio.create_task(relay())
    try:
        await tokens.login_with_device_code(account, shown.put_nowait, wait_seconds=DEVICE_FLOW_SECONDS - 30)
    except TokenError as exc:
        await publish({"state": "failed", "message": f"{exc.code}: {exc.description}"[:500]})
        await console.audit.write(who, "service account sign-in failed", account, after=exc.code)
        return
    except TimeoutError:
        await publish({"state": "failed", "message": "nobody entered the code in time"})
        return
    finally:
        relaying.cancel()
    await publish({"state": "done", "message": "signed in"})
    await console.audit.write(who, "service account signed in", account, after="device code")


async def account_sign_in(request: Request) -> Response:
    console = console_of(request)
    account = text_field(form_of(request), "account", 300)
    known = {a.lower(): a for a in console.settings.graph_service_accounts}
    if account.lower() not in known:
        return console.render(
            request, "error.html", status=400, detail="not a service account in GRAPH_SERVICE_ACCOUNTS"
        )
    account = known[account.lower()]
    await console.redis.set(
        keys.console_device_flow(account), json.dumps({"state": "starting", "message": ""}), ex=60
    )
    task = asyncio.create_task(_device_sign_in(console, account, request.state.session.who))
    console.background.add(task)
    task.add_done_callback(console.background.discard)
    return RedirectResponse("/accounts", status_code=303)


async def account_sign_in_status(request: Request) -> Response:
    return JSONResponse(await _flows(console_of(request)))


# -- STARFACE credentials ----------------------------------------------------------------------


def _store(console: Console) -> CredentialStore:
    return CredentialStore(console.redis, console.box)


async def credentials(
    request: Request, *, message: str = "", problems: list[str] | None = None, status: int = 200
) -> Response:
    console = console_of(request)
    stored = set(await _store(console).logins())
    directory = await DirectoryStore(console.redis).users()
    missing = sorted((u for u in directory if u.login not in stored), key=lambda u: u.login)
    refused = sorted(
        (s for s in await uci_sessions(console.redis) if s.error == KIND_LOGIN_REFUSED), key=lambda s: s.login
    )
    return console.render(
        request,
        "credentials.html",
        status=status,
        stored=sorted(stored),
        missing=missing,
        refused=refused,
        message=message,
        problems=problems or [],
    )


async def credentials_import(request: Request) -> Response:
    console = console_of(request)
    upload = form_of(request).get("file")
    if not isinstance(upload, UploadFile):
        return await credentials(request, problems=["choose a CSV file to import"], status=400)
    data = await upload.read(MAX_FILE_BYTES + 1)
    try:
        rows = parse_csv(data)
    except CredentialsFileError as exc:
        # All or nothing: one bad row imports nothing, and the page names every bad row.
        return await credentials(request, problems=[str(p) for p in exc.problems], status=400)
    await _store(console).put_many(rows)
    who = request.state.session.who
    await console.audit.write(
        who, "credentials imported", f"{len(rows)} logins", after=", ".join(sorted(rows))[:4000]
    )
    return await credentials(request, message=f"{len(rows)}")


async def credentials_set(request: Request) -> Response:
    console = console_of(request)
    form = form_of(request)
    login = text_field(form, "login", 200).strip()
    password = text_field(form, "password", 1000)
    problem = login_problem(login) or (None if password else "the password is empty")
    if problem:
        return await credentials(request, problems=[problem], status=400)
    await _store(console).put(login, password)
    await console.audit.write(request.state.session.who, "credentials set", login, after="password set")
    return await credentials(request, message="1")


async def credentials_delete(request: Request) -> Response:
    console = console_of(request)
    login = text_field(form_of(request), "login", 200).strip()
    deleted = await _store(console).delete(login)
    if deleted:
        await console.audit.write(
            request.state.session.who, "credentials deleted", login, before="password set"
        )
    return RedirectResponse("/credentials", status_code=303)


# -- dead letters ------------------------------------------------------------------------------


async def dead_letters(request: Request) -> Response:
    console = console_of(request)
    store = DeadLetters(console.redis)
    return console.render(
        request, "dead_letters.html", letters=await store.list(500), total=await store.count()
    )


async def dead_replay(request: Request) -> Response:
    console = console_of(request)
    store = DeadLetters(console.redis)
    target = text_field(form_of(request), "id", 100)
    who = request.state.session.who
    try:
        if target == "all":
            count = await store.replay_all()
            await console.audit.write(who, "dead letters replayed", f"{count} entries")
        else:
            await store.replay(target)
            await console.audit.write(who, "dead letter replayed", target)
    except UnknownDeadLetter as exc:
        return console.render(request, "error.html", status=404, detail=str(exc))
    return RedirectResponse("/dead-letters", status_code=303)


async def dead_purge(request: Request) -> Response:
    console = console_of(request)
    store = DeadLetters(console.redis)
    target = text_field(form_of(request), "id", 100)
    who = request.state.session.who
    if target == "all":
        count = await store.purge_all()
        await console.audit.write(who, "dead letters purged", f"{count} entries")
    else:
        try:
            await store.get(target)
        except UnknownDeadLetter as exc:
            return console.render(request, "error.html", status=404, detail=str(exc))
        await store.purge(target)
        await console.audit.write(who, "dead letter purged", target)
    return RedirectResponse("/dead-letters", status_code=303)
