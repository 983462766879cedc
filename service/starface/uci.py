"""One user's UCI session: XML-RPC calls on ``/xml-rpc`` acting as that user (docs/protocols.md, "UCI").

Authentication rides in the query of every call (``de.vertico.starface.auth`` with the SHA-512
token, or ``de.vertico.starface.jwt`` on STARFACE 10 with OAuth); the callback URL rides in the
query of ``login``.  The PBX answers credentials it does not accept with HTTP 401, and calls on a
session it does not know (never logged in, or dropped after missing keepAlives) with a fault: the
first becomes ``LoginRefused``, the second ``SessionExpired`` so the caller logs in again.

This class holds no schedule and no Redis state; ``service.starface.sessions`` decides when to call it.
"""

from __future__ import annotations

import contextlib
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from service.starface import protocol as sp
from service.starface import xmlrpc
from service.starface.gateway import LoginRefused, SessionExpired, StarfaceUnavailable, UserState
from service.starface.rest import OAuthPasswordGrant, send

# getUserState and friends are small; an answer beyond this is not from a PBX.
MAX_ANSWER_BYTES = 1024 * 1024


@dataclass(frozen=True)
class CallbackTarget:
    """Where the PBX should POST this session's events: ``{scheme}://{host}:{port}{path}``."""

    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def from_base_url(cls, base_url: str, path: str) -> CallbackTarget:
        """``base_url`` is PUBLIC_BASE_URL (a path prefix behind a proxy is kept)."""
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("callback base URL must be http(s)://host[:port][/prefix]")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/") + path)

    def query(self) -> dict[str, str]:
        return {
            sp.UCI_CALLBACK_HOST: self.host,
            sp.UCI_CALLBACK_PORT: str(self.port),
            sp.UCI_CALLBACK_PATH: self.path,
            sp.UCI_CALLBACK_TYPE: self.scheme,
        }


class UciAuth(Protocol):
    """The query parameter that authenticates one user's UCI calls."""

    login: str

    async def query(self) -> tuple[str, str]: ...

    def invalidate(self) -> bool:
        """Drop a credential the PBX refused; ``True`` when a fresh one is worth one retry."""
        ...


class LegacyUciAuth:
    """``de.vertico.starface.auth=login:sha512hex(login*sha512hex(password))``.

    The token is password-equivalent: it lives in this object only, never in Redis or a log.
    """

    def __init__(self, login: str, password: str) -> None:
        self.login = login
        self._token = sp.uci_auth_token(login, password)

    async def query(self) -> tuple[str, str]:
        return sp.UCI_AUTH_PARAM, self._token

    def invalidate(self) -> bool:
        return False  # the same password gives the same token: retrying cannot help


class JwtUciAuth:
    """``de.vertico.starface.jwt=<access token>`` from the user's own OAuth password grant."""

    def __init__(self, grant: OAuthPasswordGrant) -> None:
        self.login = grant.username
        self._grant = grant

    async def query(self) -> tuple[str, str]:
        return sp.UCI_JWT_PARAM, await self._grant.access_token()

    def invalidate(self) -> bool:
        self._grant.invalidate()
        return True


_AUTHENTICATION_WORDS = re.compile(
    r"auth|password|passwort|credential|anmeld|login failed|not permitted|access denied|unauthori[sz]ed",
    re.IGNORECASE,
)


def names_authentication(text: str) -> bool:
    """Whether a fault's text says the credentials were refused (English or German wording)."""
    return bool(_AUTHENTICATION_WORDS.search(text or ""))


class UciClient:
    def __init__(
        self,
        http: aiohttp.ClientSession,
        base_url: str,
        auth: UciAuth,
        *,
        namespace: str = "v30",
        callback_on_every_request: bool = True,
    ) -> None:
        self._http = http
        # As every public UCI client does: the callback rides on every request, not only on login,
        # in case the PBX re-reads it (docs/starface-wire.md).  STARFACE_CALLBACK_ON_EVERY_REQUEST.
        self.callback_on_every_request = callback_on_every_request
        self.callback: CallbackTarget | None = None
        self._url = base_url.rstrip("/") + sp.UCI_PATH
        self._auth = auth
        self.login_id = auth.login
        self.namespace = namespace

    async def call(
        self,
        family: str,
        name: str,
        params: list[Any] | tuple[Any, ...] = (),
        extra: dict[str, str] | None = None,
    ) -> Any:
        """One XML-RPC call as this user; see the module text for the error mapping."""
        method = sp.method(self.namespace, family, name)
        what = f"UCI {family}.{name}"
        body = xmlrpc.dumps_call(method, params)
        if extra is None and self.callback_on_every_request and self.callback is not None:
            extra = self.callback.query()
        for attempt in (1, 2):
            param, value = await self._auth.query()
            query = {param: value, **(extra or {})}
            status, answer = await send(
                self._http,
                "POST",
                self._url,
                what=what,
                max_bytes=MAX_ANSWER_BYTES,
                params=query,
                data=body,
                headers={"Content-Type": "text/xml"},
            )
            if status == 401:
                if attempt == 1 and self._auth.invalidate():
                    continue
                raise LoginRefused(self.login_id)
            if status != 200:
                raise StarfaceUnavailable(f"{what}: HTTP {status}")
            try:
                return xmlrpc.parse_response(answer, MAX_ANSWER_BYTES)
            except xmlrpc.Fault as fault:
                raise SessionExpired(self.login_id, fault.code, fault.message) from None
            except xmlrpc.XmlRpcError as exc:
                raise StarfaceUnavailable(f"{what}: unreadable answer ({exc.reason})") from None
        raise AssertionError("unreachable")

    async def login(self, callback: CallbackTarget | None) -> None:
        """Open the session with the callback registered, then subscribe to call events."""
        self.callback = callback
        try:
            ok = await self.call("requests.connection", "login", extra=callback.query() if callback else None)
        except SessionExpired as exc:
            # Whether a wrong password is a 401 or a fault is not documented (docs/starface-wire.md):
            # a fault whose text speaks of authentication counts as refused credentials, any other
            # fault on login means the PBX does not speak this dialect (STARFACE_UCI_NAMESPACE).
            if names_authentication(exc.fault_text):
                raise LoginRefused(self.login_id, f"login answered fault {exc.fault_code}") from None
            raise StarfaceUnavailable(
                f"UCI login answered fault {exc.fault_code}; check STARFACE_UCI_NAMESPACE"
            ) from None
        if ok is not True:
            raise LoginRefused(self.login_id, "login answered false")
        if callback is not None:
            subscribed = await self.call(
                "requests.service", "subscribeEvents", [sp.call_event_service(self.namespace)]
            )
            if subscribed is not True:
                raise StarfaceUnavailable("UCI requests.service.subscribeEvents answered false")

    async def keep_alive(self) -> bool:
        """``True`` while the PBX knows the session; ``False`` when it must be logged in again."""
        try:
            return await self.call("requests.connection", "keepAlive") is True
        except SessionExpired:
            return False

    async def logout(self) -> None:
        with contextlib.suppress(SessionExpired):  # already gone is what a logout wants
            await self.call("requests.connection", "logout")

    async def set_dnd(self, enabled: bool) -> None:
        await self._expect_true("requests.userState", "setDoNotDisturbSetting", [bool(enabled)])

    async def set_status_text(self, text: str) -> None:
        await self._expect_true("requests.userState", "setChatPresenceMessage", [text])

    async def call_ids(self) -> list[str]:
        """Ids of the user's calls in progress (``requests.call.getCallIds``)."""
        answer = await self.call("requests.call", "getCallIds")
        if not isinstance(answer, list):
            raise StarfaceUnavailable("UCI requests.call.getCallIds answered no list")
        return [str(item) for item in answer if isinstance(item, str) and item]

    async def call_state(self, call_id: str) -> Any:
        """One call as a ``receiveCallState`` struct (``requests.call.getCallState``)."""
        return await self.call("requests.call", "getCallState", [call_id])

    async def user_state(self) -> UserState:
        return UserState.from_uci(self.login_id, await self.call("requests.userState", "getUserState"))

    async def _expect_true(self, family: str, name: str, params: list[Any]) -> None:
        result = await self.call(family, name, params)
        if result is False:
            raise StarfaceUnavailable(f"UCI {family}.{name} answered false")
