"""The users to watch: Entra ids of the selected STARFACE users, resolved by e-mail.

Lookups use app-only Graph calls, twenty to a ``$batch``.  Results, including "not found", are
cached in Redis so a restart or a new leader does not look up thousands of addresses again;
entries are re-checked after ``refresh_seconds`` (misses sooner, since a new hire appears later).
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from service.core import keys
from service.core.clock import Clock, SystemClock
from service.core.settings import USER_MATCH_PROPERTIES
from service.graph.client import (
    BatchRequest,
    GraphClient,
    GraphError,
    GraphResponse,
    TokenSource,
    with_token,
)
from subscriptions import metrics

log = logging.getLogger(__name__)

EmailSource = Callable[[], Awaitable[list[str]]]


@dataclass(frozen=True)
class Resolution:
    ids: dict[str, str]  # lower-cased e-mail -> Entra user id
    missing: list[str]  # lower-cased e-mails without an Entra user
    # Lower-cased e-mails whose lookup failed just now and that have no cached id yet.
    unresolved: list[str] = field(default_factory=list)

    @property
    def user_ids(self) -> set[str]:
        return set(self.ids.values())


# Graph evaluates at most 15 expressions in one $filter.
FILTER_EXPRESSIONS = 15


def _clause(prop: str, email: str) -> str:
    # OData string literals escape a quote by doubling it.
    literal = email.replace("'", "''")
    if prop == "proxyAddresses":  # a collection of "smtp:alias" entries (the primary is "SMTP:")
        return f"proxyAddresses/any(x:x eq 'smtp:{literal}')"
    return f"{prop} eq '{literal}'"


def _filter_url(emails: Sequence[str], order: Sequence[str] = ("mail",)) -> str:
    clauses = " or ".join(_clause(prop, e) for e in emails for prop in order)
    query = urllib.parse.quote(clauses, safe="'=:()/")
    return f"/users?$filter={query}&$select=id,mail,userPrincipalName,proxyAddresses&$top=999"


def _match(users: list[dict[str, object]], email: str, order: Sequence[str]) -> str | None:
    """The id of the user ``email`` names, by the first property in ``order`` that matches."""
    for prop in order:
        for user in users:
            if prop == "proxyAddresses":
                raw = user.get("proxyAddresses")
                values = [str(v).lower() for v in raw] if isinstance(raw, list) else []
                hit = f"smtp:{email}" in values
            else:
                hit = str(user.get(prop) or "").lower() == email
            if hit and user.get("id"):
                return str(user["id"]).lower()
    return None


class UserDirectory:
    def __init__(
        self,
        redis: aioredis.Redis,
        graph: GraphClient,
        app_token: TokenSource,
        *,
        clock: Clock | None = None,
        refresh_seconds: float = 24 * 3600,
        missing_refresh_seconds: float = 3600,
        match_order: Sequence[str] = USER_MATCH_PROPERTIES,
    ) -> None:
        self.redis = redis
        self.graph = graph
        self.app_token = app_token
        self.clock: Clock = clock or SystemClock()
        self.refresh_seconds = refresh_seconds
        self.missing_refresh_seconds = missing_refresh_seconds
        self.match_order = tuple(match_order)
        self.per_request = max(1, FILTER_EXPRESSIONS // len(self.match_order))

    async def resolve(self, emails: Sequence[str]) -> Resolution:
        wanted = sorted({e.strip().lower() for e in emails if e and e.strip()})
        now = self.clock.now()
        cached: dict[str, dict[str, object]] = {}
        if wanted:
            values = await self.redis.hmget(keys.USER_IDS, wanted)
            for email, raw in zip(wanted, values, strict=True):
                if raw is not None:
                    cached[email] = json.loads(raw)
        stale = [e for e in wanted if e not in cached or self._stale(cached[e], now)]
        unresolved: list[str] = []
        if stale:
            fresh, failed = await self._lookup(stale, now)
            cached.update(fresh)
            # A cached id, even an old one, is better than dropping the user from its subscription.
            unresolved = [e for e in failed if e not in cached]
        ids: dict[str, str] = {}
        missing: list[str] = []
        for email in wanted:
            entry = cached.get(email)
            user_id = entry.get("id") if entry else None
            if isinstance(user_id, str) and user_id:
                ids[email] = user_id
            elif email not in unresolved:
                missing.append(email)
        metrics.USERS_NOT_FOUND.set(len(missing))
        return Resolution(ids, missing, unresolved)

    def _stale(self, entry: dict[str, object], now: float) -> bool:
        checked = entry.get("checked_at")
        age = now - float(checked) if isinstance(checked, (int, float)) else float("inf")
        limit = self.refresh_seconds if entry.get("id") else self.missing_refresh_seconds
        return age >= limit

    async def _lookup(self, emails: list[str], now: float) -> tuple[dict[str, dict[str, object]], list[str]]:
        step = self.per_request
        groups = [emails[i : i + step] for i in range(0, len(emails), step)]
        items = [BatchRequest("GET", _filter_url(group, self.match_order)) for group in groups]

        async def lookup(token: str) -> list[GraphResponse]:
            responses = await self.graph.batch(items, token=token)
            if any(r.status == 401 for r in responses):
                raise GraphError("POST", "/v1.0/$batch", 401, "InvalidAuthenticationToken")
            return responses

        responses = await with_token(self.app_token, lookup)
        found: dict[str, dict[str, object]] = {}
        failed: list[str] = []
        for group, response in zip(groups, responses, strict=True):
            if response.status != 200 or not isinstance(response.body, dict):
                failed.extend(group)
                continue
            users = [u for u in response.body.get("value") or [] if isinstance(u, dict)]
            for email in group:
                found[email] = {"id": _match(users, email, self.match_order), "checked_at": now}
        if found:
            await self.redis.hset(
                keys.USER_IDS, mapping={e: json.dumps(v, separators=(",", ":")) for e, v in found.items()}
            )
        if failed:
            log.warning("could not look up %d e-mail addresses now; retrying next pass", len(failed))
        return found, failed
