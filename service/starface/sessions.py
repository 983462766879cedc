"""UCI sessions of all selected users, kept alive by whichever replica is free, with Redis as the schedule.

The PBX keeps one UCI session per user, keyed by the user, and every call authenticates itself in
its query; nothing about a session lives in a process.  So the work — log in, keepAlive every
``STARFACE_KEEPALIVE_SECONDS``, log in again when the PBX dropped the session — is a schedule in
Redis, a sorted set of login -> next due time (ms):

* ``claim`` (Lua, atomic) takes the due logins and pushes their score ahead by a lease, so no
  other replica sees them while this one works; a replica that dies mid-work simply lets the
  lease run out and the logins come due again for someone else.
* ``complete`` (Lua) sets the next due time only if the score is still this replica's lease, so a
  login that left the selection meanwhile (removed) or was woken (credentials changed) is not
  overwritten with a stale schedule.

``run_due(now)`` is one pass (tests call it with the sandbox's clock and never sleep); ``run`` is
the production loop.  ``SessionManager`` is also the UCI implementation of ``StarfaceGateway``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import aiohttp
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.core import keys, metrics
from service.core.circuit import Circuit, probe_http
from service.core.secretbox import SealError, SecretBox
from service.core.settings import Settings, reveal
from service.core.storage import decoded
from service.starface.callback_tokens import callback_path, register_token, token_digest
from service.starface.calls import CallEvent, CallFormatError, append_call
from service.starface.credentials import CredentialStore
from service.starface.gateway import (
    CredentialsMissing,
    CredentialsUnreadable,
    GatewayError,
    LoginRefused,
    SessionExpired,
    StarfaceUnavailable,
    UnknownUser,
    UserState,
)
from service.starface.rest import OAuthPasswordGrant
from service.starface.uci import CallbackTarget, JwtUciAuth, LegacyUciAuth, UciAuth, UciClient

log = logging.getLogger(__name__)

T = TypeVar("T")

# Called after each successful keepAlive with the login and a function that reads the user's
# state (getUserState); the bridge records it (service.bridge.readback).
ReadBackHook = Callable[[str, Callable[[], Awaitable[UserState]]], Awaitable[object]]

ACTIVE = "active"
FAILED = "failed"
LOGGED_OUT = "logged_out"

# Error kinds in a session status, for `status` and metrics.
KIND_CREDENTIALS_MISSING = "credentials_missing"
KIND_CREDENTIALS_UNREADABLE = "credentials_unreadable"
KIND_LOGIN_REFUSED = "login_refused"
KIND_UNAVAILABLE = "unavailable"
# Calls in progress read after a login; a user has a handful at most.
MAX_RECOVERED_CALLS = 20

_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, login in ipairs(due) do
  redis.call('ZADD', KEYS[1], ARGV[3], login)
end
return due
"""

_COMPLETE = """
local done = 0
for i = 2, #ARGV, 2 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) == tonumber(ARGV[1]) then
    redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i])
    done = done + 1
  end
end
return done
"""


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


@dataclass(frozen=True)
class SessionStatus:
    login: str
    state: str
    since: float
    error: str | None = None
    detail: str | None = None
    last_ok: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    def describe(self) -> str:
        """One line for ``status``; the detail names the login and the reason, never a secret."""
        if self.state == FAILED and self.error == KIND_LOGIN_REFUSED:
            return f"login {self.login}: STARFACE refused the password ({self.detail})"
        if self.state == FAILED:
            return f"login {self.login}: {self.error} ({self.detail})"
        return f"login {self.login}: {self.state}"

    @classmethod
    def from_json(cls, raw: Any) -> SessionStatus | None:
        """The stored status, or None when there is none (``raw`` None) or it is unreadable."""
        if raw is None:
            return None
        try:
            return cls(**json.loads(raw))
        except (TypeError, ValueError):
            return None


@dataclass
class PassReport:
    """What one ``run_due`` pass did: outcome -> count, and the logins that failed with why."""

    outcomes: Counter[str] = field(default_factory=Counter)
    failures: dict[str, str] = field(default_factory=dict)
    logged_out: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Claim:
    lease_ms: int
    logins: tuple[str, ...]


@dataclass(frozen=True)
class SyncReport:
    added: tuple[str, ...]
    removed: tuple[str, ...]


class SessionManager:
    def __init__(
        self,
        redis: aioredis.Redis,
        settings: Settings,
        http: aiohttp.ClientSession,
        *,
        credentials: CredentialStore | None = None,
        callback_base_url: str | None = None,
        clock: Callable[[], float] = time.time,
        token_clock: Callable[[], float] = time.monotonic,
        lease_seconds: float = 60.0,
        retry_seconds: float = 300.0,
        refused_retry_seconds: float = 600.0,
        max_refused_per_hour: int = 3,
        batch: int = 200,
        concurrency: int = 50,
        read_back: ReadBackHook | None = None,
    ) -> None:
        if not settings.starface_base_url:
            raise ValueError("STARFACE_BASE_URL is needed for UCI sessions")
        self.redis = redis
        self.settings = settings
        self.partitions = settings.partitions
        self.http = http
        self.box = SecretBox.from_settings(settings)
        self.credentials = credentials or CredentialStore(redis, self.box)
        # PUBLIC_BASE_URL by default; tests point the PBX at a loopback server instead.
        self.callback_base_url = callback_base_url or settings.public_base_url
        self.base_url = settings.starface_base_url
        self.namespace = settings.starface_uci_namespace
        self.keepalive = float(settings.starface_keepalive_seconds)
        self.clock = clock
        self.token_clock = token_clock
        self.lease = lease_seconds
        # A refused login is retried slowly: hammering a PBX with a wrong password can lock the
        # account.  Storing new credentials wakes the session at once (CredentialStore.put_many).
        self.retry = retry_seconds
        # STARFACE locks an account after repeated failed logins, so a refused password is tried
        # again no sooner than this, and never more often than this per hour, by any replica.
        self.refused_retry = refused_retry_seconds
        self.max_refused_per_hour = max_refused_per_hour
        self.batch = batch
        self.read_back = read_back
        self._limit = asyncio.Semaphore(concurrency)
        self._claim = redis.register_script(_CLAIM)
        self._complete = redis.register_script(_COMPLETE)
        self._clients: dict[str, tuple[bytes, UciClient]] = {}
        # One login at a time per user in this process: DND and text are written together, and
        # after a dropped session each would otherwise log in again (and replace the other's).
        self._login_locks: dict[str, asyncio.Lock] = {}
        self._logins_done: dict[str, int] = {}
        self.circuit = Circuit()
        self.circuit.on_close.append(self._wake_failed_sessions)
        self._background: set[asyncio.Task[None]] = set()

    # -- selection ------------------------------------------------------------------------------

    async def sync(self, logins: Iterable[str], now: float | None = None) -> SyncReport:
        """Make the schedule hold exactly ``logins``: new ones due now, gone ones queued for logout."""
        wanted = set(logins)
        now = self.clock() if now is None else now
        scheduled = {decoded(m) for m in await self.redis.zrange(keys.UCI_DUE, 0, -1)}
        known = scheduled | {decoded(k) for k in await self.redis.hkeys(keys.UCI_SESSIONS)}
        added = sorted(wanted - scheduled)
        removed = sorted(known - wanted)
        async with self.redis.pipeline(transaction=True) as pipe:
            if added:
                pipe.zadd(keys.UCI_DUE, dict.fromkeys(added, _ms(now)), nx=True)
                pipe.srem(keys.UCI_LEAVING, *added)
            if removed:
                pipe.zrem(keys.UCI_DUE, *removed)
                pipe.sadd(keys.UCI_LEAVING, *removed)
            await pipe.execute()
        return SyncReport(tuple(added), tuple(removed))

    # -- the schedule ---------------------------------------------------------------------------

    async def run_due(self, now: float | None = None) -> PassReport:
        """One pass: log out leavers, then work every login due at ``now`` (batch after batch)."""
        now = self.clock() if now is None else now
        report = PassReport()
        await self._process_leaving(report)
        while True:
            claim = await self.claim(now)
            if not claim.logins:
                return report
            # Every claimed login's session state and password in one round trip, not two each.
            # The count of this process's logins is taken first: a write that logs in while the
            # batch waits makes the stale state harmless (no second login, see _single_login).
            seen = [self._logins_done.get(login, 0) for login in claim.logins]
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hmget(keys.UCI_SESSIONS, list(claim.logins))
                pipe.hmget(keys.STARFACE_CREDENTIALS, list(claim.logins))
                raw_statuses, sealed = await pipe.execute()
            results = await asyncio.gather(
                *(
                    self._limited(self._work(login, now, SessionStatus.from_json(raw), key, done))
                    for login, raw, key, done in zip(claim.logins, raw_statuses, sealed, seen, strict=True)
                )
            )
            next_due: dict[str, float] = {}
            statuses: dict[str, str] = {}
            for login, (due, outcome, status) in zip(claim.logins, results, strict=True):
                next_due[login] = due
                report.outcomes[outcome] += 1
                if status.state == FAILED:
                    report.failures[login] = status.error or outcome
                statuses[login] = status.to_json()
            await self.redis.hset(keys.UCI_SESSIONS, mapping=statuses)  # type: ignore[arg-type]
            await self.complete(claim, next_due)
            if len(claim.logins) < self.batch:
                return report

    async def claim(self, now: float) -> Claim:
        """Atomically take up to ``batch`` logins due at ``now``, leasing them to this replica."""
        lease = _ms(now + self.lease)
        raw = await self._claim(keys=[keys.UCI_DUE], args=[_ms(now), self.batch, lease])
        return Claim(lease, tuple(decoded(x) for x in raw))

    async def complete(self, claim: Claim, next_due: dict[str, float]) -> int:
        """Schedule each claimed login's next work, unless it was removed or woken meanwhile."""
        args: list[Any] = [claim.lease_ms]
        for login, due in next_due.items():
            args += [login, _ms(due)]
        return int(await self._complete(keys=[keys.UCI_DUE], args=args))

    def _first_keepalive(self, login: str) -> float:
        """The wait before a new session's first keepAlive: between half and all of the interval,
        fixed per login.  Sessions logged in together (a start, a PBX back after an outage) would
        otherwise send every keepAlive and read-back in the same second, interval after interval:
        a load spike on the PBX and on the worker.  Later keepAlives keep the spread."""
        spread = zlib.crc32(login.encode()) / 0xFFFFFFFF
        return self.keepalive * (0.5 + spread / 2)

    async def _limited(self, work: Awaitable[T]) -> T:
        async with self._limit:
            return await work

    async def _work(
        self, login: str, now: float, previous: SessionStatus | None, sealed: bytes | str | None, seen: int
    ) -> tuple[float, str, SessionStatus]:
        try:
            if not self.circuit.allow():
                raise StarfaceUnavailable("the PBX is not answering (circuit open)")
            client = self._client_for(login, sealed)
            if previous is None or previous.state != ACTIVE:
                await self._single_login(login, client, now, seen, previous)
                return now + self._first_keepalive(login), "login", self._ok(login, now, previous)
            if await client.keep_alive():
                self.circuit.succeeded()
                if self.read_back is not None:
                    try:
                        await self.read_back(login, client.user_state)
                    except (RedisError, OSError) as exc:
                        # The session is fine; only this look at the user's state is lost.
                        log.warning("read-back of login %s not recorded: %s", login, type(exc).__name__)
                return now + self.keepalive, "keepalive", self._ok(login, now, previous)
            await self._single_login(login, client, now, seen, previous)
            return now + self._first_keepalive(login), "relogin", self._ok(login, now, previous)
        except GatewayError as exc:
            kind = _kind(exc)
            self._account(exc)
            log.warning("UCI session of login %s: %s", login, exc)
            # An unreachable PBX is worth retrying at the normal pace; refused credentials are not.
            wait = {KIND_UNAVAILABLE: self.keepalive, KIND_LOGIN_REFUSED: self.refused_retry}.get(
                kind, self.retry
            )
            return now + wait, kind, self._failed(login, now, kind, exc, previous)

    def _ok(self, login: str, now: float, previous: SessionStatus | None) -> SessionStatus:
        since = previous.since if previous is not None and previous.state == ACTIVE else now
        return SessionStatus(login, ACTIVE, since, last_ok=now)

    def _failed(
        self, login: str, now: float, kind: str, exc: Exception, previous: SessionStatus | None
    ) -> SessionStatus:
        same = previous is not None and previous.state == FAILED and previous.error == kind
        since = previous.since if same and previous is not None else now
        last_ok = previous.last_ok if previous is not None else None
        return SessionStatus(login, FAILED, since, error=kind, detail=str(exc), last_ok=last_ok)

    async def _process_leaving(self, report: PassReport) -> None:
        while True:
            popped = await self.redis.spop(keys.UCI_LEAVING, self.batch)
            leavers = [decoded(x) for x in popped or ()]
            if not leavers:
                return
            await asyncio.gather(*(self._limited(self._leave(login)) for login in leavers))
            report.logged_out += leavers

    async def _leave(self, login: str) -> None:
        status = await self.status(login)
        if status is not None and status.state == ACTIVE:
            try:
                await (await self._client(login)).logout()
            except GatewayError as exc:
                log.info("UCI logout of departed login %s failed: %s", login, exc)
        await self._forget(login)

    async def _forget(self, login: str) -> None:
        self._clients.pop(login, None)
        digest = await self._stored_digest(login)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(keys.UCI_SESSIONS, login)
            pipe.hdel(keys.UCI_CALLBACK_SECRETS, login)
            if digest is not None:
                pipe.hdel(keys.UCI_CALLBACK_TOKENS, digest)
            await pipe.execute()
        if digest is None:
            # The sealed token was unreadable: find the lookup entry by its value instead.
            async for field_name, value in self.redis.hscan_iter(keys.UCI_CALLBACK_TOKENS):
                if decoded(value) == login:
                    await self.redis.hdel(keys.UCI_CALLBACK_TOKENS, field_name)

    # -- one user's session ---------------------------------------------------------------------

    async def _client(self, login: str) -> UciClient:
        """A client for ``login`` with its current password (rebuilt when the password changed)."""
        return self._client_for(login, await self.redis.hget(keys.STARFACE_CREDENTIALS, login))

    def _client_for(self, login: str, sealed: bytes | str | None) -> UciClient:
        """The client for the stored (sealed) password just read: kept while the stored value
        is the same, so a write costs no decryption; a new password builds a new client."""
        if sealed is None:
            raise CredentialsMissing(login)
        raw = sealed if isinstance(sealed, bytes) else sealed.encode()
        fingerprint = hashlib.sha256(raw).digest()
        cached = self._clients.get(login)
        if cached is not None and hmac.compare_digest(cached[0], fingerprint):
            return cached[1]
        password = self.credentials.open(login, raw)
        if password is None:
            raise CredentialsMissing(login)
        auth: UciAuth
        if self.settings.starface_auth == "oauth":
            grant = OAuthPasswordGrant(
                self.http,
                self.base_url,
                client_secret=reveal(self.settings.starface_oauth_client_secret) or "",
                username=login,
                password=password,
                clock=self.token_clock,
            )
            auth = JwtUciAuth(grant)
        else:
            auth = LegacyUciAuth(login, password)
        client = UciClient(
            self.http,
            self.base_url,
            auth,
            namespace=self.namespace,
            callback_on_every_request=self.settings.starface_callback_on_every_request,
        )
        self._clients[login] = (fingerprint, client)
        return client

    async def _login(self, login: str, client: UciClient, now: float) -> None:
        await self._refuse_if_locked_out(login, now)
        token = await self._callback_token(login)
        try:
            await client.login(CallbackTarget.from_base_url(self.callback_base_url, callback_path(token)))
        except LoginRefused:
            key = keys.uci_refused_logins(login)
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.zadd(key, {repr(now): now})
                pipe.expire(key, 3600)
                await pipe.execute()
            metrics.STARFACE_LOGINS_REFUSED.inc()
            raise
        await self.redis.delete(keys.uci_refused_logins(login))
        log.info("UCI session of login %s logged in", login)

    async def _refuse_if_locked_out(self, login: str, now: float) -> None:
        """Refuse a login attempt that could lock the account: too soon after a refusal, or too many."""
        key = keys.uci_refused_logins(login)
        await self.redis.zremrangebyscore(key, "-inf", now - 3600)
        recent: Any = await self.redis.zrange(key, 0, -1, withscores=True)
        if not recent:
            return
        last = max(float(score) for _, score in recent)
        if len(recent) >= self.max_refused_per_hour:
            until = min(float(score) for _, score in recent) + 3600
            raise LoginRefused(
                login,
                f"STARFACE refused the password {len(recent)} times in the last hour; no new attempt "
                f"for {max(0, until - now) / 60:.0f} min, or store the right one with "
                "`presence-bridge starface credentials set`",
            )
        if now - last < self.refused_retry:
            wait_minutes = (last + self.refused_retry - now) / 60
            raise LoginRefused(
                login, f"STARFACE refused the password; next attempt in {wait_minutes:.0f} min"
            )

    async def _stored_digest(self, login: str) -> str | None:
        sealed = await self.redis.hget(keys.UCI_CALLBACK_SECRETS, login)
        if sealed is None:
            return None
        try:
            return token_digest(self._open_token(login, sealed))
        except SealError:
            return None

    def _token_context(self, login: str) -> str:
        return f"{keys.UCI_CALLBACK_SECRETS}/{login}"

    def _open_token(self, login: str, sealed: Any) -> str:
        raw = sealed if isinstance(sealed, bytes) else str(sealed).encode()
        return self.box.open(raw, self._token_context(login)).decode()

    async def _callback_token(self, login: str) -> str:
        """The session's callback path token: stable across re-logins, so events in flight during
        a re-login still find their user; created once per session, shared by all replicas."""
        sealed = await self.redis.hget(keys.UCI_CALLBACK_SECRETS, login)
        token: str | None = None
        if sealed is not None:
            try:
                token = self._open_token(login, sealed)
            except SealError:
                token = None
        if token is None:
            fresh = secrets.token_urlsafe(32)
            sealed_new = self.box.seal(fresh.encode(), self._token_context(login))
            if sealed is None:
                created = await self.redis.hsetnx(keys.UCI_CALLBACK_SECRETS, login, sealed_new)
            else:
                await self.redis.hset(keys.UCI_CALLBACK_SECRETS, login, sealed_new)
                created = True
            token = (
                fresh
                if created
                else self._open_token(login, await self.redis.hget(keys.UCI_CALLBACK_SECRETS, login))
            )
        # Written on every login so the lookup heals itself if it was ever lost.
        await register_token(self.redis, token, login)
        return token

    async def status(self, login: str) -> SessionStatus | None:
        raw = await self.redis.hget(keys.UCI_SESSIONS, login)
        return SessionStatus.from_json(raw)

    async def statuses(self) -> list[SessionStatus]:
        """Every session's status, for `status`: failures name the login and the kind of error."""
        found = []
        for raw in (await self.redis.hgetall(keys.UCI_SESSIONS)).values():
            parsed = SessionStatus.from_json(raw)
            if parsed is not None:
                found.append(parsed)
        return sorted(found, key=lambda s: s.login)

    async def _record(self, status: SessionStatus) -> None:
        await self.redis.hset(keys.UCI_SESSIONS, status.login, status.to_json())

    # -- StarfaceGateway --------------------------------------------------------------------------

    async def set_dnd(self, login: str, enabled: bool) -> None:
        await self._act(login, lambda client: client.set_dnd(enabled))

    async def set_status_text(self, login: str, text: str) -> None:
        await self._act(login, lambda client: client.set_status_text(text))

    async def read_state(self, login: str) -> UserState:
        return await self._act(login, lambda client: client.user_state())

    async def _single_login(
        self, login: str, client: UciClient, now: float, seen: int, previous: SessionStatus | None
    ) -> None:
        """Log in unless another task of this process did since ``seen`` (its count of logins)."""
        lock = self._login_locks.setdefault(login, asyncio.Lock())
        async with lock:
            if self._logins_done.get(login, 0) != seen:
                return
            await self._login(login, client, now)
            self.circuit.succeeded()
            self._logins_done[login] = seen + 1
            await self._record(self._ok(login, now, previous))
            # Calls that began while there was no session sent their events to nobody.
            await self._recover_calls(login, client)

    async def _act(self, login: str, action: Callable[[UciClient], Awaitable[T]]) -> T:
        """Run ``action`` on the user's session, logging in first or again when the PBX needs it.

        While the circuit is open (the PBX is down) it fails at once, except as a probe."""
        # Selected?  Session state?  Password?  One round trip for all three.  This process's
        # count of logins is taken first, as in run_due: a login by another task while the state
        # is read makes the stale state harmless (no second login, see _single_login).
        seen = self._logins_done.get(login, 0)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zscore(keys.UCI_DUE, login)
            pipe.hget(keys.UCI_SESSIONS, login)
            pipe.hget(keys.STARFACE_CREDENTIALS, login)
            due, raw_status, sealed = await pipe.execute()
        if due is None:
            raise UnknownUser(login)
        if not self.circuit.allow():
            raise StarfaceUnavailable("the PBX is not answering; waiting for it (circuit open)")
        status = SessionStatus.from_json(raw_status)
        try:
            result = await self._act_on_session(login, action, status, sealed, seen)
        except GatewayError as exc:
            self._account(exc)
            raise
        self.circuit.succeeded()
        return result

    async def _recover_calls(self, login: str, client: UciClient) -> None:
        """Queue the user's calls in progress like callbacks, so a (re)login mid-call keeps the
        user Busy in Teams without waiting for the next event; and a HANGUP for every call the
        bridge still holds that the PBX no longer has (its HANGUP went to a session that was
        gone).  Never fails the login."""
        try:
            asked_at = time.time()
            call_ids = await client.call_ids()
            for call_id in call_ids[:MAX_RECOVERED_CALLS]:
                struct = await client.call_state(call_id)
                event = CallEvent.from_call_state(login, struct, source="recovered")
                await append_call(self.redis, self.partitions, event, self.settings.presence_stream_maxlen)
            for call_id in await self._ended_unseen(login, set(call_ids), asked_at):
                ended = CallEvent(
                    login=login,
                    call_id=call_id,
                    state="HANGUP",
                    time=None,
                    received_at=time.time(),
                    source="recovered",
                )
                await append_call(self.redis, self.partitions, ended, self.settings.presence_stream_maxlen)
        except (GatewayError, CallFormatError) as exc:
            # A PBX without these methods, or an answer of another shape: the next callback tells.
            log.info("calls in progress of login %s not read after login: %s", login, exc)

    async def _ended_unseen(self, login: str, live: set[str], asked_at: float) -> list[str]:
        """Calls the bridge holds for ``login`` that began before the PBX was asked and that it
        no longer lists: a call first seen after the question may simply be too new for the answer."""
        user_id = await self.redis.hget(keys.IDENTITY_USER_BY_LOGIN, login)
        if user_id is None:
            return []
        held = await self.redis.hgetall(keys.user_calls(decoded(user_id)))
        ended = []
        for raw_id, raw_value in held.items():
            call_id = decoded(raw_id)
            _, _, first_seen = decoded(raw_value).partition("|")
            if call_id not in live and float(first_seen or 0) < asked_at:
                ended.append(call_id)
        return sorted(ended)

    def _account(self, exc: GatewayError) -> None:
        """Tell the circuit what a failure says about the PBX as a whole."""
        if isinstance(exc, StarfaceUnavailable):
            self.circuit.failed()
        elif isinstance(exc, (LoginRefused, SessionExpired)):
            self.circuit.succeeded()  # an answer of a live PBX, about this one user
        # No stored password, an unselected user: nothing was asked of the PBX.

    async def _act_on_session(
        self,
        login: str,
        action: Callable[[UciClient], Awaitable[T]],
        previous: SessionStatus | None,
        sealed: bytes | str | None,
        seen: int,
    ) -> T:
        now = self.clock()
        try:
            client = self._client_for(login, sealed)
            if previous is None or previous.state != ACTIVE:
                await self._single_login(login, client, now, seen, previous)
                seen = self._logins_done.get(login, 0)
            try:
                return await action(client)
            except SessionExpired:
                await self._single_login(login, client, now, seen, previous)
                return await action(client)
        except (CredentialsMissing, CredentialsUnreadable, LoginRefused) as exc:
            await self._record(self._failed(login, now, _kind(exc), exc, previous))
            raise

    # -- shutdown -------------------------------------------------------------------------------

    async def logout_all(self) -> list[str]:
        """Log out every active session (the bridge is stopping for good); next start logs in."""
        now = self.clock()
        active = [s for s in await self.statuses() if s.state == ACTIVE]

        async def one(status: SessionStatus) -> str | None:
            try:
                await (await self._client(status.login)).logout()
            except GatewayError as exc:
                log.info("UCI logout of login %s failed: %s", status.login, exc)
                return None
            await self._record(SessionStatus(status.login, LOGGED_OUT, now, last_ok=status.last_ok))
            return status.login

        done = await asyncio.gather(*(self._limited(one(s)) for s in active))
        if active:
            await self.redis.zadd(keys.UCI_DUE, {s.login: _ms(now) for s in active}, xx=True)
        return [login for login in done if login is not None]

    async def run(
        self,
        stop: asyncio.Event,
        *,
        logins: Callable[[], Awaitable[tuple[int, list[str]]]] | None = None,
        tick: float = 1.0,
    ) -> None:
        """Production loop until ``stop`` is set.

        ``logins`` returns (version, selected logins), e.g. from the directory; the selection is
        re-synced whenever the version changes, so a directory change needs no restart.
        """
        version: int | None = None
        while not stop.is_set():
            try:
                if self.circuit.probe_due():
                    await self.probe()
                if logins is not None:
                    current, selected = await logins()
                    if current != version:
                        await self.sync(selected)
                        version = current
                report = await self.run_due()
                if report.failures:
                    log.debug("UCI pass failures: %s", report.failures)
            except (RedisError, OSError) as exc:
                log.warning("UCI session pass failed: %s", type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=tick)

    async def probe(self) -> bool:
        """Ask the PBX whether it answers at all (its REST login page needs no credentials)."""
        return await probe_http(self.circuit, self.http, f"{self.base_url}/rest/login")

    def _wake_failed_sessions(self) -> None:
        """The PBX is back: sessions that failed as unavailable are due now, not at their retry."""
        task = asyncio.get_running_loop().create_task(self._wake())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _wake(self) -> None:
        now = self.clock()
        failed = [s.login for s in await self.statuses() if s.state == FAILED and s.error == KIND_UNAVAILABLE]
        if failed:
            with contextlib.suppress(RedisError, OSError):
                await self.redis.zadd(keys.UCI_DUE, dict.fromkeys(failed, _ms(now)), xx=True)


def _kind(exc: GatewayError) -> str:
    if isinstance(exc, CredentialsMissing):
        return KIND_CREDENTIALS_MISSING
    if isinstance(exc, CredentialsUnreadable):
        return KIND_CREDENTIALS_UNREADABLE
    if isinstance(exc, LoginRefused):
        return KIND_LOGIN_REFUSED
    # StarfaceUnavailable, SessionExpired (a dropped session right after login): try again soon.
    return KIND_UNAVAILABLE
