"""Access tokens from Entra through MSAL: app-only for reads and writes, delegated per service account.

Presence subscriptions accept only delegated tokens (``Presence.Read.All``), so each service account
keeps an MSAL ``SerializableTokenCache`` in Redis, sealed, shared by every replica.  A short Redis
lock serialises refreshes of one account across replicas, and the cache is written back only when
MSAL changed it.  MSAL is synchronous (``requests``): every call runs in a worker thread.

A refresh token that stopped working is not retried in a loop: the account is marked in
``ServiceAccounts`` (status, log, metric) and ``LoginRequired`` tells the caller to skip it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
import warnings
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import msal
import redis.asyncio as aioredis
import requests
from redis.asyncio.lock import Lock
from redis.exceptions import LockError
from requests.adapters import HTTPAdapter

from service.core import keys
from service.core.secretbox import SealError, SecretBox
from service.core.settings import Settings, reveal
from subscriptions.accounts import AccountState, ServiceAccounts

log = logging.getLogger(__name__)

GRAPH_RESOURCE = "https://graph.microsoft.com"
APP_SCOPES = [f"{GRAPH_RESOURCE}/.default"]
# Short form, as Entra names Graph scopes in its answer: MSAL finds cached tokens by that name.
DELEGATED_SCOPES = ["Presence.Read.All"]
PUBLIC_ENTRA_HOSTS = frozenset(
    {
        "login.microsoftonline.com",
        "login.microsoftonline.us",
        "login.chinacloudapi.cn",
        "login.partner.microsoftonline.cn",
    }
)

# AADSTS codes that no retry fixes: the account needs an operator.
_CONSENT_CODES = frozenset({65001, 65004})
_LOGIN_CODES = frozenset(
    {50034, 50053, 50055, 50057, 50076, 50079, 50126, 50173, 53003, 700082, 70000, 9002313}
)


class TokenError(Exception):
    """No token for ``account`` right now; ``code`` is Entra's error (never the token or password)."""

    def __init__(self, account: str, code: str, description: str = "") -> None:
        self.account = account
        self.code = code
        self.description = description
        super().__init__(f"no token for {account}: {code} {description}".rstrip())


class LoginRequired(TokenError):
    """The account's refresh token and stored password (if any) no longer work: sign it in again."""


class ConsentRequired(TokenError):
    """Entra reports that the account or tenant withdrew consent for the app."""


def _summary(result: Mapping[str, Any] | None) -> tuple[str, str, set[int]]:
    if not result:
        return "no_cached_account", "the token cache holds no sign-in for this account", set()
    codes = {int(c) for c in result.get("error_codes") or [] if str(c).isdigit()}
    description = str(result.get("error_description", "")).splitlines()[0][:300]
    return str(result.get("error", "unknown_error")), description, codes


def _classify(account: str, result: Mapping[str, Any] | None) -> TokenError:
    code, description, codes = _summary(result)
    if codes & _CONSENT_CODES or str((result or {}).get("suberror", "")) == "consent_required":
        return ConsentRequired(account, code, description)
    if result is None or codes & _LOGIN_CODES or code in ("invalid_grant", "interaction_required"):
        return LoginRequired(account, code, description)
    return TokenError(account, code, description)


class _TimeoutAdapter(HTTPAdapter):
    """Gives every MSAL request a timeout (MSAL passes none when it is handed a session)."""

    def __init__(self, timeout: float) -> None:
        super().__init__(max_retries=1)
        self.default_timeout = timeout

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.default_timeout
        return super().send(request, *args, **kwargs)


class _UserRealmAdapter(_TimeoutAdapter):
    """MSAL asks ``https://<host>/common/userrealm/…`` without the authority's port; add it back."""

    def __init__(self, timeout: float, netloc: str) -> None:
        super().__init__(timeout)
        self.netloc = netloc

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        parts = urllib.parse.urlsplit(str(request.url))
        request.url = urllib.parse.urlunsplit(parts._replace(netloc=self.netloc))
        return super().send(request, *args, **kwargs)


def msal_session(authority_base_url: str, extra_ca_file: str | None, timeout: float) -> requests.Session:
    """A session only MSAL uses: no environment overrides, the configured CA, timeouts everywhere."""
    session = requests.Session()
    # With trust_env on, a REQUESTS_CA_BUNDLE in the environment silently overrides ``verify``.
    session.trust_env = False
    session.verify = extra_ca_file or True
    adapter = _TimeoutAdapter(timeout)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    parts = urllib.parse.urlsplit(authority_base_url)
    if parts.port is not None and parts.hostname:
        session.mount(f"https://{parts.hostname}/common/userrealm/", _UserRealmAdapter(timeout, parts.netloc))
    return session


class Tokens:
    def __init__(
        self,
        redis: aioredis.Redis,
        box: SecretBox,
        accounts: ServiceAccounts,
        *,
        tenant_id: str,
        client_id: str,
        client_secret: str | None = None,
        client_certificate_pfx: str | None = None,
        authority_base_url: str = "https://login.microsoftonline.com",
        extra_ca_file: str | None = None,
        timeout: float = 30.0,
        lock_seconds: float = 30.0,
    ) -> None:
        self.redis = redis
        self.box = box
        self.accounts = accounts
        self.client_id = client_id
        self.authority = f"{authority_base_url.rstrip('/')}/{tenant_id}"
        self.client_secret = client_secret
        self.client_certificate_pfx = client_certificate_pfx
        host = urllib.parse.urlsplit(authority_base_url).hostname or ""
        # Instance discovery asks the public Entra host about the authority; a private one is unknown there.
        self.instance_discovery = host in PUBLIC_ENTRA_HOSTS
        self.http = msal_session(authority_base_url, extra_ca_file, timeout)
        self.lock_seconds = lock_seconds
        self._confidential: Any = None
        self._public: dict[str, tuple[Any, Any]] = {}
        self._local_locks: dict[str, asyncio.Lock] = {}

    @classmethod
    def from_settings(
        cls, redis: aioredis.Redis, settings: Settings, *, client_certificate_pfx: str | None = None
    ) -> Tokens:
        box = SecretBox.from_settings(settings)
        return cls(
            redis,
            box,
            ServiceAccounts(redis, box, settings.graph_service_accounts),
            tenant_id=settings.tenant_id,
            client_id=settings.client_id,
            client_secret=reveal(settings.client_secret),
            client_certificate_pfx=client_certificate_pfx,
            authority_base_url=settings.authority_base_url,
            extra_ca_file=settings.extra_ca_file,
        )

    # -- app-only -------------------------------------------------------------------------------

    def _build_confidential(self) -> Any:
        credential: Any
        if self.client_certificate_pfx:
            credential = {"private_key_pfx_path": self.client_certificate_pfx}
        elif self.client_secret:
            credential = self.client_secret
        else:
            raise TokenError("app", "no_credential", "set AZURE_CLIENT_SECRET or a client certificate")
        return msal.ConfidentialClientApplication(
            self.client_id,
            client_credential=credential,
            authority=self.authority,
            http_client=self.http,
            instance_discovery=self.instance_discovery,
        )

    async def app_token(self, fresh: bool = False) -> str:
        """An application token for Graph (cached in memory by MSAL until shortly before expiry).

        ``fresh`` drops the cached token: client-credential calls take no ``force_refresh``.
        """
        if self._confidential is None or fresh:
            self._confidential = await asyncio.to_thread(self._build_confidential)
        try:
            result = await asyncio.to_thread(self._confidential.acquire_token_for_client, scopes=APP_SCOPES)
        except (requests.RequestException, ValueError) as exc:
            raise TokenError("app", "unreachable", type(exc).__name__) from None
        if not isinstance(result, dict) or "access_token" not in result:
            code, description, _ = _summary(result if isinstance(result, dict) else None)
            raise TokenError("app", code, description)
        return str(result["access_token"])

    # -- delegated ------------------------------------------------------------------------------

    def _context(self, account: str) -> str:
        return f"{keys.TOKEN_CACHES}/{account.lower()}"

    async def _app_for(self, account: str) -> tuple[Any, Any]:
        found = self._public.get(account.lower())
        if found is None:

            def build() -> tuple[Any, Any]:
                cache = msal.SerializableTokenCache()
                app = msal.PublicClientApplication(
                    self.client_id,
                    authority=self.authority,
                    token_cache=cache,
                    http_client=self.http,
                    instance_discovery=self.instance_discovery,
                )
                return app, cache

            try:
                found = await asyncio.to_thread(build)
            except (requests.RequestException, ValueError) as exc:
                raise TokenError(account, "unreachable", type(exc).__name__) from None
            self._public[account.lower()] = found
        return found

    async def _load(self, account: str, cache: Any) -> None:
        sealed = await self.redis.hget(keys.TOKEN_CACHES, account.lower())
        state: str | None = None
        if sealed is not None:
            raw = sealed if isinstance(sealed, bytes) else sealed.encode()
            try:
                state = self.box.open(raw, self._context(account)).decode()
            except SealError:
                log.error("token cache of %s cannot be opened (BRIDGE_SECRET_KEY changed?)", account)
        cache.deserialize(state)

    async def _save(self, account: str, cache: Any) -> None:
        if cache.has_state_changed:
            sealed = self.box.seal(cache.serialize().encode(), self._context(account))
            await self.redis.hset(keys.TOKEN_CACHES, account.lower(), sealed)
            cache.has_state_changed = False

    @asynccontextmanager
    async def _locked(self, account: str) -> AsyncIterator[None]:
        local = self._local_locks.setdefault(account.lower(), asyncio.Lock())
        async with local:
            lock = Lock(
                self.redis,
                keys.token_cache_lock(account),
                timeout=self.lock_seconds,
                sleep=0.05,
                blocking_timeout=self.lock_seconds,
                thread_local=False,
            )
            held = await lock.acquire()
            # After a full lock period the holder is dead or stuck; refreshing anyway is safe
            # (Entra accepts a refresh token more than once) and better than no token.
            try:
                yield
            finally:
                if held:
                    with contextlib.suppress(LockError):  # it ran out meanwhile: nothing to release
                        await lock.release()

    async def delegated_token(
        self, account: str, *, force_refresh: bool = False, min_lifetime_seconds: float = 0
    ) -> str:
        """A ``Presence.Read.All`` token for the account, from the shared cache or by refreshing it.

        ``min_lifetime_seconds`` refreshes a cached token that expires sooner: a subscription stays
        authorized only as long as the token it was created or renewed with.  Falls back to the
        stored password (username/password accounts).  Raises ``LoginRequired`` or
        ``ConsentRequired`` (after recording the alert) when only an operator can help.
        """
        app, cache = await self._app_for(account)
        async with self._locked(account):
            await self._load(account, cache)
            try:
                result = await asyncio.to_thread(self._silent, app, account, force_refresh)
                if (
                    _ok(result)
                    and not force_refresh
                    and float(result.get("expires_in", 0)) < min_lifetime_seconds  # type: ignore[union-attr]
                ):
                    result = await asyncio.to_thread(self._silent, app, account, True)
                if not _ok(result):
                    password = await self.accounts.password(account)
                    if password is not None:
                        result = await asyncio.to_thread(self._password, app, account, password)
            except requests.RequestException as exc:
                raise TokenError(account, "unreachable", type(exc).__name__) from None
            finally:
                await self._save(account, cache)
        if _ok(result):
            await self.accounts.mark(account, AccountState.OK)
            return str(result["access_token"])  # type: ignore[index]
        error = _classify(account, result)
        await self._record(error)
        raise error

    async def _record(self, error: TokenError) -> None:
        reason = f"{error.code}: {error.description}"
        if isinstance(error, ConsentRequired):
            await self.accounts.mark(error.account, AccountState.CONSENT_REQUIRED, reason)
        elif isinstance(error, LoginRequired):
            await self.accounts.mark(error.account, AccountState.LOGIN_REQUIRED, reason)

    @staticmethod
    def _silent(app: Any, account: str, force_refresh: bool) -> dict[str, Any] | None:
        found = app.get_accounts(username=account)
        if not found:
            return None
        result = app.acquire_token_silent_with_error(
            DELEGATED_SCOPES, account=found[0], force_refresh=force_refresh
        )
        return result if isinstance(result, dict) else None

    @staticmethod
    def _password(app: Any, account: str, password: str) -> dict[str, Any] | None:
        with warnings.catch_warnings():
            # MSAL deprecates ROPC for public clients; the products this replaces rely on it.
            warnings.simplefilter("ignore", DeprecationWarning)
            result = app.acquire_token_by_username_password(account, password, scopes=DELEGATED_SCOPES)
        return result if isinstance(result, dict) else None

    async def login_with_password(self, account: str, password: str) -> None:
        """Sign the account in by username/password now, and keep the password for later sign-ins."""
        app, cache = await self._app_for(account)
        async with self._locked(account):
            await self._load(account, cache)
            try:
                result = await asyncio.to_thread(self._password, app, account, password)
            except requests.RequestException as exc:
                raise TokenError(account, "unreachable", type(exc).__name__) from None
            if _ok(result):
                await self._save(account, cache)
        if not _ok(result):
            error = _classify(account, result)
            await self._record(error)
            raise error
        await self.accounts.set_password(account, password)
        await self.accounts.mark(account, AccountState.OK)

    async def login_with_device_code(
        self, account: str, show: Callable[[str], None], *, wait_seconds: float = 900.0
    ) -> None:
        """Device-code sign-in (accounts with MFA): ``show`` gets the instruction with the code."""
        app, cache = await self._app_for(account)
        # Start from an empty cache: tokens of a revoked earlier sign-in must not be kept.
        cache.deserialize(None)
        try:
            flow = await asyncio.to_thread(app.initiate_device_flow, scopes=DELEGATED_SCOPES)
        except requests.RequestException as exc:
            raise TokenError(account, "unreachable", type(exc).__name__) from None
        if "user_code" not in flow:
            code, description, _ = _summary(flow)
            raise TokenError(account, code, description)
        show(str(flow["message"]))
        try:
            result = await asyncio.wait_for(
                asyncio.to_thread(app.acquire_token_by_device_flow, flow), wait_seconds
            )
        except (TimeoutError, asyncio.CancelledError):
            flow["expires_at"] = 0  # stops MSAL's polling thread
            raise
        except requests.RequestException as exc:
            raise TokenError(account, "unreachable", type(exc).__name__) from None
        if not _ok(result):
            code, description, _ = _summary(result)
            raise TokenError(account, code, description)
        signed_in = str((result.get("id_token_claims") or {}).get("preferred_username", ""))
        if signed_in and signed_in.lower() != account.lower():
            raise TokenError(account, "wrong_account", f"the code was approved by {signed_in}, not {account}")
        async with self._locked(account):
            cache.has_state_changed = True
            await self._save(account, cache)
        await self.accounts.forget_password(account)
        await self.accounts.mark(account, AccountState.OK)


def _ok(result: Any) -> bool:
    return isinstance(result, dict) and "access_token" in result
