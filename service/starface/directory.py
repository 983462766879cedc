"""The selected STARFACE users, keyed by e-mail for matching with Teams, shared through Redis.

Selection (as the product this replaces offers it): every user, or the members of one STARFACE
group, plus extra login IDs.  E-mail is the key to Entra (docs/protocols.md, "REST"), compared
lower-cased.  Two selected users with one e-mail cannot both be matched, so both are left out and
the problem names both; a user without e-mail is left out and named.  ``select_users`` is the pure
rule; ``refresh`` reads the PBX and stores the result for every process; ``run`` repeats that.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.lock import Lock
from redis.exceptions import LockError, RedisError

from service.core import keys
from service.core.settings import Settings
from service.core.storage import decoded
from service.starface.gateway import GatewayError, StarfaceUnavailable
from service.starface.rest import RestClient, StarfaceUser, email_key, find_group

log = logging.getLogger(__name__)

DUPLICATE_EMAIL = "duplicate_email"
MISSING_EMAIL = "missing_email"
UNKNOWN_LOGIN = "unknown_login"
UNKNOWN_GROUP = "unknown_group"
GROUPS_UNREADABLE = "groups_unreadable"
NOTHING_SELECTED = "nothing_selected"


@dataclass(frozen=True)
class Problem:
    """One reason a configured user is not bridged; ``message`` is what ``status`` prints."""

    kind: str
    message: str
    logins: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "logins": list(self.logins)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Problem:
        return cls(str(raw["kind"]), str(raw["message"]), tuple(str(x) for x in raw.get("logins", ())))


@dataclass(frozen=True)
class Selection:
    users: tuple[StarfaceUser, ...]
    problems: tuple[Problem, ...]

    @property
    def logins(self) -> list[str]:
        return [u.login for u in self.users]


def _label(user: StarfaceUser) -> str:
    name = f"{user.first_name} {user.family_name}".strip()
    return f"login {user.login} ({name})" if name else f"login {user.login}"


def select_users(
    users: Sequence[StarfaceUser],
    *,
    select_all: bool = False,
    group: str | None = None,
    group_members: Collection[int] | None = None,
    extra_logins: Sequence[str] = (),
    memberships: Mapping[int, Sequence[str]] | None = None,
) -> Selection:
    """The selection rule, without I/O.

    ``group`` is the configured group; ``group_members`` its member user ids, or ``None`` when the
    PBX has no such group.  ``memberships`` gives each user id's group names and ids.
    """
    problems: list[Problem] = []
    by_login = {u.login: u for u in users}
    chosen: dict[str, StarfaceUser] = {}
    if select_all:
        chosen.update(by_login)
    if group:
        if group_members is None:
            problems.append(Problem(UNKNOWN_GROUP, f"STARFACE group {group!r} does not exist"))
        else:
            members = set(group_members)
            chosen.update({u.login: u for u in users if u.id in members})
    for login in extra_logins:
        if login in by_login:
            chosen[login] = by_login[login]
        else:
            problems.append(Problem(UNKNOWN_LOGIN, f"extra login {login} is not a STARFACE user", (login,)))
    if not select_all and not group and not extra_logins:
        problems.append(
            Problem(
                NOTHING_SELECTED,
                "no STARFACE users selected: set STARFACE_SELECT_ALL, STARFACE_GROUP "
                "or STARFACE_EXTRA_LOGINS",
            )
        )

    by_email: dict[str, list[StarfaceUser]] = defaultdict(list)
    for user in sorted(chosen.values(), key=lambda u: u.login):
        key = email_key(user.email)
        if "@" not in key:
            problems.append(
                Problem(MISSING_EMAIL, f"{_label(user)} has no e-mail address; skipped", (user.login,))
            )
            continue
        by_email[key].append(user)

    selected: list[StarfaceUser] = []
    for key, holders in sorted(by_email.items()):
        if len(holders) > 1:
            names = " and ".join(_label(u) for u in holders)
            problems.append(
                Problem(
                    DUPLICATE_EMAIL,
                    f"{names} share the e-mail address {key}; none of them is bridged until it is unique",
                    tuple(u.login for u in holders),
                )
            )
            continue
        user = holders[0]
        groups = tuple((memberships or {}).get(user.id, ()))
        selected.append(dataclasses.replace(user, email=user.email.strip(), groups=groups))
    selected.sort(key=lambda u: u.login)
    return Selection(tuple(selected), tuple(problems))


@dataclass(frozen=True)
class DirectoryStatus:
    version: int
    refreshed_at: float | None
    users: int
    problems: tuple[Problem, ...]
    last_error: str | None
    last_error_at: float | None

    def describe(self) -> list[str]:
        """Lines for ``status``: the count, the last refresh error, every problem."""
        when = "never" if self.refreshed_at is None else _iso(self.refreshed_at)
        lines = [f"STARFACE directory: {self.users} user(s) selected, last refreshed {when}"]
        if self.last_error:
            at = "" if self.last_error_at is None else f" at {_iso(self.last_error_at)}"
            lines.append(f"  last refresh failed{at}: {self.last_error}")
        lines += [f"  {p.kind}: {p.message}" for p in self.problems]
        return lines


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _digest(serialized: list[str]) -> str:
    payload = json.dumps(serialized, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


class DirectoryStore:
    """The selection as every process reads it."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def save(self, selection: Selection, *, refreshed_at: float) -> bool:
        """Store the selection in one MULTI; ``True`` (and a new version) when it changed.

        An unchanged selection (same digest, every user still stored) only refreshes the meta
        data: with thousands of users a refresh must not rewrite both hashes each time.
        """
        serialized = [u.to_json() for u in selection.users]
        digest = _digest(serialized)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(keys.STARFACE_DIRECTORY_META, "digest")
            pipe.hlen(keys.STARFACE_DIRECTORY)
            old, stored = await pipe.execute()
        changed = old is None or decoded(old) != digest or int(stored) != len(serialized)
        meta: dict[str, str] = {
            "refreshed_at": repr(refreshed_at),
            "problems": json.dumps([p.to_dict() for p in selection.problems]),
            "digest": digest,
            "last_error": "",
            "last_error_at": "",
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            if changed:
                pipe.delete(keys.STARFACE_DIRECTORY, keys.STARFACE_DIRECTORY_EMAILS)
            if changed and selection.users:
                pipe.hset(
                    keys.STARFACE_DIRECTORY,
                    mapping={u.login: raw for u, raw in zip(selection.users, serialized, strict=True)},
                )
                pipe.hset(
                    keys.STARFACE_DIRECTORY_EMAILS, mapping={u.email_key: u.login for u in selection.users}
                )
            pipe.hset(keys.STARFACE_DIRECTORY_META, mapping=meta)  # type: ignore[arg-type]
            if changed:
                pipe.hincrby(keys.STARFACE_DIRECTORY_META, "version", 1)
            await pipe.execute()
        return changed

    async def record_failure(self, detail: str, *, at: float) -> None:
        """The PBX could not be read: the last good selection stays, the error is shown."""
        await self.redis.hset(
            keys.STARFACE_DIRECTORY_META, mapping={"last_error": detail, "last_error_at": repr(at)}
        )

    async def users(self) -> list[StarfaceUser]:
        raw = await self.redis.hvals(keys.STARFACE_DIRECTORY)
        return sorted((StarfaceUser.from_json(v) for v in raw), key=lambda u: u.login)

    async def logins(self) -> list[str]:
        return sorted(decoded(k) for k in await self.redis.hkeys(keys.STARFACE_DIRECTORY))

    async def by_login(self, login: str) -> StarfaceUser | None:
        raw = await self.redis.hget(keys.STARFACE_DIRECTORY, login)
        return None if raw is None else StarfaceUser.from_json(raw)

    async def groups(self, login: str) -> frozenset[str]:
        """Names and ids of the groups of ``login``; they pick the mapping's group overrides."""
        user = await self.by_login(login)
        return frozenset(user.groups) if user else frozenset()

    async def by_email(self, email: str) -> StarfaceUser | None:
        login = await self.redis.hget(keys.STARFACE_DIRECTORY_EMAILS, email_key(email))
        return None if login is None else await self.by_login(decoded(login))

    async def emails(self) -> list[str]:
        """Lower-cased e-mails of the selected users: what the subscriptions watch in Entra."""
        return sorted(decoded(k) for k in await self.redis.hkeys(keys.STARFACE_DIRECTORY_EMAILS))

    async def version(self) -> int:
        raw = await self.redis.hget(keys.STARFACE_DIRECTORY_META, "version")
        return int(raw) if raw is not None else 0

    async def versioned_logins(self) -> tuple[int, list[str]]:
        """(version, logins) — the shape ``SessionManager.run`` re-syncs from."""
        return await self.version(), await self.logins()

    async def problems(self) -> list[Problem]:
        raw = await self.redis.hget(keys.STARFACE_DIRECTORY_META, "problems")
        if raw is None:
            return []
        return [Problem.from_dict(p) for p in json.loads(raw)]

    async def status(self) -> DirectoryStatus:
        meta = {
            decoded(k): decoded(v)
            for k, v in (await self.redis.hgetall(keys.STARFACE_DIRECTORY_META)).items()
        }
        count = await self.redis.hlen(keys.STARFACE_DIRECTORY)
        return DirectoryStatus(
            version=int(meta.get("version") or 0),
            refreshed_at=float(meta["refreshed_at"]) if meta.get("refreshed_at") else None,
            users=int(count),
            problems=tuple(Problem.from_dict(p) for p in json.loads(meta.get("problems") or "[]")),
            last_error=meta.get("last_error") or None,
            last_error_at=float(meta["last_error_at"]) if meta.get("last_error_at") else None,
        )


async def refresh(
    rest: RestClient, store: DirectoryStore, settings: Settings, *, now: float | None = None
) -> Selection:
    """Read users (and the group) from the PBX, apply the rule, store the result.

    A PBX that cannot be read leaves the stored selection as it was and records the error.
    """
    at = time.time() if now is None else now
    memberships: dict[int, list[str]] = defaultdict(list)
    members: frozenset[int] | None = None
    groups_failed: GatewayError | None = None
    try:
        users = await rest.users()
    except GatewayError as exc:
        await store.record_failure(str(exc), at=at)
        raise
    try:
        groups = await rest.groups()
        members_of: dict[int, frozenset[int]] = {}
        for found_group in groups:
            members_of[found_group.id] = await rest.group_member_ids(found_group.id)
            for user_id in members_of[found_group.id]:
                memberships[user_id] += [found_group.name, str(found_group.id)]
        if settings.starface_group:
            found = find_group(groups, settings.starface_group)
            members = None if found is None else members_of[found.id]
    except GatewayError as exc:
        if settings.starface_group:
            # The selection itself needs the group: keep the stored one and say which rule failed.
            rule = f"STARFACE_GROUP={settings.starface_group!r}"
            message = f"{rule} needs the STARFACE groups, which cannot be read: {exc}"
            await store.record_failure(message, at=at)
            raise StarfaceUnavailable(message) from None
        # Only the mapping's group overrides need memberships: bridge everyone, without them.
        groups_failed, memberships = exc, defaultdict(list)
    selection = select_users(
        users,
        select_all=settings.starface_select_all,
        group=settings.starface_group,
        group_members=members,
        extra_logins=settings.starface_extra_logins,
        memberships=memberships,
    )
    if groups_failed is not None:
        note = Problem(
            GROUPS_UNREADABLE,
            f"STARFACE groups cannot be read ({groups_failed}); group overrides of the mapping do not apply",
        )
        selection = dataclasses.replace(selection, problems=(*selection.problems, note))
    await store.save(selection, refreshed_at=at)
    for problem in selection.problems:
        log.warning("STARFACE directory: %s", problem.message)
    return selection


async def run(
    rest: RestClient,
    store: DirectoryStore,
    settings: Settings,
    stop: asyncio.Event,
    *,
    on_refresh: Callable[[Selection], Awaitable[None]] | None = None,
) -> None:
    """Refresh every ``STARFACE_DIRECTORY_REFRESH_SECONDS`` until ``stop``.

    A lease in Redis lets one replica per period do the reads; the others just see the result.
    """
    period = settings.starface_directory_refresh_seconds
    # Held for a whole period and not released after a good refresh: it gates how often any
    # replica reads the directory, not only who reads it.
    gate = Lock(store.redis, keys.STARFACE_DIRECTORY_LOCK, timeout=period, blocking=False, thread_local=False)
    while not stop.is_set():
        try:
            if await gate.acquire():
                selection = await refresh(rest, store, settings)
                if on_refresh is not None:
                    await on_refresh(selection)
        except GatewayError as exc:
            log.warning("STARFACE directory refresh failed: %s", exc)
            # Let the next tick (any replica) try again instead of waiting out a whole period.
            await _release(gate)
        except (RedisError, OSError) as exc:
            log.warning("STARFACE directory refresh failed: Redis %s", type(exc).__name__)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=min(period, 30))


async def _release(gate: Lock) -> None:
    # Only our own gate: another replica's must never be deleted.  Else the gate simply runs out.
    with contextlib.suppress(LockError, RedisError, OSError):
        await gate.release()
