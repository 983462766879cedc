"""STARFACE REST client: admin login, users, groups and group members (docs/protocols.md, "REST").

Two ways to authenticate, chosen by ``STARFACE_AUTH``:

* ``legacy`` — ``GET /rest/login`` for a nonce, ``POST /rest/login`` with the SHA-512 secret, then
  the ``authToken`` header.  The token lives 4 h; the client logs in again after 3.5 h and on any
  401, once per request.
* ``oauth`` — STARFACE 10's password grant on ``/auth/realms/pbx/oauth2/token`` and a Bearer
  header; the short-lived access token is refreshed before it runs out.

Every request has a timeout, and every failure becomes a ``service.starface.gateway`` error whose text holds
neither URL query nor token nor password (the chained aiohttp exception is dropped for that reason).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from service.core import metrics
from service.core.settings import Settings, reveal
from service.core.tls import client_context
from service.starface import protocol as sp
from service.starface.gateway import LoginRefused, StarfaceUnavailable

# A slow PBX must not hang the bridge: every STARFACE request ends within these bounds.
DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=15, connect=5, sock_read=10)
# The user list of a large PBX is a few MB at most; more than this is not a STARFACE answer.
MAX_ANSWER_BYTES = 16 * 1024 * 1024

Clock = Callable[[], float]


def open_http(
    extra_ca_file: str | None = None,
    *,
    limit: int = 100,
    timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT,
) -> aiohttp.ClientSession:
    """The HTTP session for everything STARFACE.

    Cookies are dropped: one session serves many users' UCI calls, and a cookie set for one user
    (e.g. ``JSESSIONID``) must never ride along on another user's request.
    """
    connector = aiohttp.TCPConnector(ssl=client_context(extra_ca_file), limit=limit)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(), timeout=timeout)


async def send(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    what: str,
    max_bytes: int = MAX_ANSWER_BYTES,
    **kwargs: Any,
) -> tuple[int, bytes]:
    """One request; returns status and body, or raises ``StarfaceUnavailable`` naming ``what``.

    ``what`` is a label such as ``GET /rest/users``: URLs may carry a UCI token in their query, so
    they never appear in an error.
    """
    label = re.sub(r"\d+", "{id}", what)
    started = time.monotonic()
    try:
        async with http.request(method, url, **kwargs) as response:
            # read(n) returns what has arrived so far, not n bytes: read to the end, bounded.
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.content.iter_chunked(65536):
                size += len(chunk)
                if size > max_bytes:
                    raise StarfaceUnavailable(f"{what}: answer larger than {max_bytes} bytes")
                chunks.append(chunk)
            body = b"".join(chunks)
            if response.status >= 500:
                metrics.STARFACE_CALL_ERRORS.labels(label).inc()
            return response.status, body
    except (aiohttp.ClientError, TimeoutError) as exc:
        metrics.STARFACE_CALL_ERRORS.labels(label).inc()
        raise StarfaceUnavailable(f"{what}: {type(exc).__name__}") from None
    finally:
        metrics.STARFACE_CALL_SECONDS.labels(label).observe(time.monotonic() - started)


def _json(body: bytes, what: str) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise StarfaceUnavailable(f"{what}: answer is not JSON") from None


# -- OAuth (STARFACE 10) ----------------------------------------------------------------------


class OAuthPasswordGrant:
    """Access tokens for one user from ``rest-client-headless`` (password, then refresh grant)."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        base_url: str,
        *,
        client_secret: str,
        username: str,
        password: str,
        clock: Clock = time.monotonic,
    ) -> None:
        self._http = http
        self._url = base_url.rstrip("/") + sp.OAUTH_TOKEN_PATH
        self._client_secret = client_secret
        self.username = username
        self._password = password
        self._clock = clock
        self._access: str | None = None
        self._access_renew_at = 0.0
        self._refresh: str | None = None
        self._refresh_until = 0.0

    def invalidate(self) -> None:
        """Forget the access token (the PBX refused it); the refresh token may still serve."""
        self._access = None

    async def access_token(self) -> str:
        now = self._clock()
        if self._access is not None and now < self._access_renew_at:
            return self._access
        if self._refresh is not None and now < self._refresh_until:
            try:
                return await self._grant({"grant_type": "refresh_token", "refresh_token": self._refresh}, now)
            except LoginRefused:
                self._refresh = None  # an expired or revoked refresh token: start over
        return await self._grant(
            {"grant_type": "password", "username": self.username, "password": self._password}, now
        )

    async def _grant(self, form: dict[str, str], now: float) -> str:
        what = f"POST {sp.OAUTH_TOKEN_PATH} ({form['grant_type']})"
        data = {
            "client_id": sp.OAUTH_CLIENT_ID,
            "client_secret": self._client_secret,
            "scope": sp.OAUTH_SCOPE,
        }
        data.update(form)
        status, body = await send(self._http, "POST", self._url, what=what, data=data)
        if status in (400, 401, 403):
            raise LoginRefused(self.username, "OAuth grant refused")
        if status != 200:
            raise StarfaceUnavailable(f"{what}: HTTP {status}")
        answer = _json(body, what)
        access = answer.get("access_token") if isinstance(answer, dict) else None
        if not isinstance(access, str) or not access:
            raise StarfaceUnavailable(f"{what}: no access_token in the answer")
        expires_in = _seconds(answer.get("expires_in"), 300.0)
        # Renew ahead of expiry so a token never reaches the PBX in its last seconds.
        self._access_renew_at = now + expires_in - max(1.0, min(30.0, expires_in / 5))
        self._access = access
        refresh = answer.get("refresh_token")
        if isinstance(refresh, str) and refresh:
            self._refresh = refresh
            self._refresh_until = now + _seconds(answer.get("refresh_expires_in"), 0.0) - 5.0
        return access


def _seconds(value: Any, default: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(value)


# -- REST -------------------------------------------------------------------------------------


def email_key(email: str) -> str:
    """The form e-mails are matched in, on both sides."""
    return email.strip().lower()


@dataclass(frozen=True)
class StarfaceUser:
    id: int
    login: str
    email: str
    first_name: str = ""
    family_name: str = ""
    # Names and ids of the user's STARFACE groups, once the directory has read them: they pick the
    # mapping's group overrides.
    groups: tuple[str, ...] = ()

    @property
    def email_key(self) -> str:
        return email_key(self.email)

    @property
    def display_name(self) -> str:
        return f"{self.first_name} {self.family_name}".strip()

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, raw: Any) -> StarfaceUser:
        data = json.loads(raw)
        data["groups"] = tuple(data.get("groups", ()))
        return cls(**data)

    @classmethod
    def from_rest(cls, item: Any) -> StarfaceUser | None:
        """A ``User`` object; ``None`` for an entry without a usable id or login."""
        if not isinstance(item, dict):
            return None
        user_id = _int(item.get("id"))
        login = item.get("login")
        if isinstance(login, int) and not isinstance(login, bool):
            login = str(login)
        if user_id is None or not isinstance(login, str) or not login.strip():
            return None
        return cls(
            id=user_id,
            login=login.strip(),
            email=_str(item.get("email")).strip(),
            first_name=_str(item.get("firstName")),
            family_name=_str(item.get("familyName")),
        )


@dataclass(frozen=True)
class StarfaceGroup:
    id: int
    name: str
    internal_number: str = ""


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def find_group(groups: list[StarfaceGroup], wanted: str) -> StarfaceGroup | None:
    """``STARFACE_GROUP`` names a group by id or by name (exact, else the one case-blind match)."""
    wanted = wanted.strip()
    if wanted.isdigit():
        for group in groups:
            if group.id == int(wanted):
                return group
    exact = [g for g in groups if g.name == wanted]
    if len(exact) == 1:
        return exact[0]
    folded = [g for g in groups if g.name.casefold() == wanted.casefold()]
    return folded[0] if len(folded) == 1 else None


class RestClient:
    """The admin's REST session for directory reads."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        base_url: str,
        login: str,
        password: str,
        *,
        auth: str = "legacy",
        oauth_client_secret: str | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        if auth not in ("legacy", "oauth"):
            raise ValueError("auth must be legacy or oauth")
        if auth == "oauth" and not oauth_client_secret:
            raise ValueError("oauth needs the rest-client-headless client secret")
        self._http = http
        self._base = base_url.rstrip("/")
        self.login_id = login
        self._password = password
        self._clock = clock
        self._token: str | None = None
        self._token_at = 0.0
        self._oauth = (
            OAuthPasswordGrant(
                http,
                base_url,
                client_secret=str(oauth_client_secret),
                username=login,
                password=password,
                clock=clock,
            )
            if auth == "oauth"
            else None
        )

    @classmethod
    def from_settings(
        cls, http: aiohttp.ClientSession, settings: Settings, *, clock: Clock = time.monotonic
    ) -> RestClient:
        if not (settings.starface_base_url and settings.starface_admin_login):
            raise ValueError("STARFACE_BASE_URL and STARFACE_ADMIN_LOGIN are needed for the directory")
        return cls(
            http,
            settings.starface_base_url,
            settings.starface_admin_login,
            reveal(settings.starface_admin_password) or "",
            auth=settings.starface_auth,
            oauth_client_secret=reveal(settings.starface_oauth_client_secret),
            clock=clock,
        )

    @property
    def logged_in(self) -> bool:
        return self._token is not None

    def _rest_headers(self) -> dict[str, str]:
        return {sp.REST_VERSION_HEADER: sp.REST_VERSION, "Accept": "application/json"}

    async def login(self) -> None:
        """Legacy nonce login (a no-op beyond fetching a token for OAuth)."""
        if self._oauth is not None:
            self._oauth.invalidate()
            await self._oauth.access_token()
            return
        url = f"{self._base}/rest/login"
        status, body = await send(
            self._http, "GET", url, what="GET /rest/login", headers=self._rest_headers()
        )
        if status != 200:
            raise StarfaceUnavailable(f"GET /rest/login: HTTP {status}")
        template = _json(body, "GET /rest/login")
        if not isinstance(template, dict) or not isinstance(template.get("nonce"), str):
            raise StarfaceUnavailable("GET /rest/login: no nonce in the answer")
        login_type = template.get("loginType") or "Internal"
        if login_type != "Internal":
            raise LoginRefused(self.login_id, f"login type {login_type!s:.40} is not supported")
        nonce = template["nonce"]
        payload = {
            "loginType": login_type,
            "nonce": nonce,
            "secret": sp.rest_login_secret(self.login_id, self._password, nonce),
        }
        status, body = await send(
            self._http, "POST", url, what="POST /rest/login", headers=self._rest_headers(), json=payload
        )
        if status in (400, 401, 403):
            raise LoginRefused(self.login_id)
        if status != 200:
            raise StarfaceUnavailable(f"POST /rest/login: HTTP {status}")
        answer = _json(body, "POST /rest/login")
        token = answer.get("token") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            raise StarfaceUnavailable("POST /rest/login: no token in the answer")
        self._token = token
        self._token_at = self._clock()

    async def logout(self) -> None:
        if self._oauth is not None or self._token is None:
            return
        headers = {**self._rest_headers(), sp.REST_TOKEN_HEADER: self._token}
        self._token = None
        await send(
            self._http, "DELETE", f"{self._base}/rest/login", what="DELETE /rest/login", headers=headers
        )

    async def _auth_headers(self) -> dict[str, str]:
        if self._oauth is not None:
            return {"Authorization": f"Bearer {await self._oauth.access_token()}"}
        if self._token is None or self._clock() - self._token_at >= sp.REST_TOKEN_RENEW_AFTER_SECONDS:
            await self.login()
        assert self._token is not None
        return {sp.REST_TOKEN_HEADER: self._token}

    def _invalidate(self) -> None:
        self._token = None
        if self._oauth is not None:
            self._oauth.invalidate()

    async def get_json(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """GET ``/rest{path}``; one fresh login and retry on 401."""
        what = f"GET /rest{path}"
        for attempt in (1, 2):
            headers = {**self._rest_headers(), **(await self._auth_headers())}
            status, body = await send(
                self._http, "GET", f"{self._base}/rest{path}", what=what, headers=headers, params=params
            )
            if status == 401:
                self._invalidate()
                if attempt == 1:
                    continue
                raise LoginRefused(self.login_id, f"{what} refused a fresh token")
            if status != 200:
                raise StarfaceUnavailable(f"{what}: HTTP {status}")
            return _json(body, what)
        raise AssertionError("unreachable")

    async def users(self) -> list[StarfaceUser]:
        answer = await self.get_json("/users")
        if not isinstance(answer, list):
            raise StarfaceUnavailable("GET /rest/users: not a list")
        return [user for user in map(StarfaceUser.from_rest, answer) if user is not None]

    async def groups(self) -> list[StarfaceGroup]:
        answer = await self.get_json("/groups")
        if not isinstance(answer, list):
            raise StarfaceUnavailable("GET /rest/groups: not a list")
        groups: list[StarfaceGroup] = []
        for item in answer:
            group_id = _int(item.get("id")) if isinstance(item, dict) else None
            if group_id is None:
                continue
            groups.append(
                StarfaceGroup(
                    id=group_id,
                    name=_str(item.get("groupname") or item.get("name")),
                    internal_number=_str(item.get("groupinternalnumber")),
                )
            )
        return groups

    async def group_member_ids(self, group_id: int) -> frozenset[int]:
        """User ids assigned to the group (Swagger ``Group.assignableUsers[].assigned``)."""
        answer = await self.get_json(f"/groups/{int(group_id)}")
        if not isinstance(answer, dict):
            raise StarfaceUnavailable("GET /rest/groups/{id}: not an object")
        members: set[int] = set()
        for item in answer.get("assignableUsers") or ():
            if isinstance(item, dict) and item.get("assigned") is True:
                user_id = _int(item.get("id"))
                if user_id is not None:
                    members.add(user_id)
        return frozenset(members)
