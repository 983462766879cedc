"""The reconciler: from observed state to STARFACE and Teams, level-triggered.

Events never act directly.  A presence change (after the worker stored it) or a STARFACE call
event (after it updated the user's calls) only marks the user due.  A reconcile then reads the
user's whole observed state, asks ``service.bridge.desired.decide`` what STARFACE and Teams should show,
and applies only the difference from what the bridge last applied.  So a burst of events for one
user collapses into one pass, re-applying is harmless, and after any outage the next pass
converges.  ``Schedule`` makes sure only one process reconciles a user at a time.

Failures back off per user (a failing user never blocks others) and are retried until they
succeed.  While the bridge holds a Teams session, it re-sends ``setPresence`` before the session's
``expirationDuration`` runs out; that duration is short, so a bridge that died never leaves a user
Busy for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from service.bridge.decisions import DecisionLog, DecisionRecord, log_entry
from service.bridge.desired import (
    DND_ENFORCE,
    DND_RESPECT,
    Decision,
    DndOverride,
    ObservedUser,
    StarfaceShown,
    TeamsSession,
    decide,
    echo_of_bridge,
)
from service.bridge.due import Schedule
from service.bridge.identity import IdentityStore
from service.bridge.mapping import Mapping, format_table
from service.bridge.observed import ObservedPresence, parse_observed
from service.bridge.streams import Entry
from service.bridge.userstate import (
    BridgeRecord,
    Call,
    UserStateStore,
    parse_bridge,
    parse_calls,
)
from service.core import keys, metrics
from service.core.partitions import Partitions
from service.core.storage import decoded, run_scripts
from service.graph.client import GraphThrottled, GraphUnavailable
from service.graph.presence import PresenceChange, TeamsPresence
from service.graph.teams import TeamsGateway
from service.starface.calls import CallEvent, CallFormatError
from service.starface.gateway import (
    CredentialsMissing,
    CredentialsUnreadable,
    GatewayError,
    LoginRefused,
    StarfaceGateway,
    StarfaceUnavailable,
)

log = logging.getLogger(__name__)

# The services a write may wait for as a whole (their circuits tell ``Reconciler.back``).
STARFACE = "starface"
GRAPH = "graph"

# A failure that a retry in seconds cannot fix (a password, a permission) is retried slowly.
_SLOW_RETRY_SECONDS = 600.0
_MAX_BACKOFF_SECONDS = 300.0

Groups = Callable[[str], Awaitable[frozenset[str]]]


async def _no_groups(login: str) -> frozenset[str]:
    return frozenset()


def backoff(failures: int) -> float:
    """Seconds before the next try after ``failures`` consecutive failures (with jitter)."""
    base = min(_MAX_BACKOFF_SECONDS, 2.0 ** min(failures, 16))
    return base * (0.75 + random.random() / 2)


@dataclass
class _Outcome:
    actions: list[str] = field(default_factory=list)
    results: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    slow_retry: bool = False
    # The services (STARFACE, GRAPH) whose write failed because the service as a whole did not
    # answer, not because of this user.
    down: set[str] = field(default_factory=set)
    # Graph's Retry-After: the earliest time to come back, honoured however long and whichever attempt.
    not_before: float | None = None
    updates: dict[str, object] = field(default_factory=dict)
    applied_at: float | None = None
    # Decide again then without new input (the rewrite budget opens again).
    recheck_at: float | None = None

    def done(self, action: str, result: str, when: float) -> None:
        self.actions.append(action)
        self.results.append(result)
        self.applied_at = when

    def failed(self, action: str, error: Exception, now: float | None = None) -> None:
        if isinstance(error, GraphThrottled):
            if now is not None:
                self.not_before = max(self.not_before or 0.0, now + error.retry_after)
        elif isinstance(error, GraphUnavailable):
            self.down.add(GRAPH)
        elif isinstance(error, StarfaceUnavailable):
            self.down.add(STARFACE)
        self.actions.append(action)
        self.results.append(f"failed: {error}")
        self.errors.append(f"{action}: {error}")
        metrics.RECONCILE_FAILURES.labels(action.split()[0]).inc()


@dataclass(frozen=True)
class Inputs:
    """Everything a decision about one user is made from."""

    user: ObservedUser
    observed: ObservedPresence | None
    bridge: BridgeRecord
    calls: list[Call]
    login: str | None


async def gather_inputs(
    redis: aioredis.Redis,
    user_id: str,
    now: float,
    *,
    groups: Groups = _no_groups,
    call_max_seconds: float = 12 * 3600,
    prune: bool = True,
) -> Inputs:
    """Read one user's observed state, in one round trip; ``prune=False`` changes nothing (for previews)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hget(keys.IDENTITY_LOGIN_BY_USER, user_id)
        pipe.hgetall(keys.observed_presence(user_id))
        pipe.hgetall(keys.user_calls(user_id))
        pipe.hgetall(keys.user_bridge(user_id))
        raw_login, raw_observed, raw_calls, raw_bridge = await pipe.execute()
    login = None if raw_login is None else decoded(raw_login)
    observed = parse_observed(user_id, raw_observed)
    calls = parse_calls(raw_calls)
    stale = [c.call_id for c in calls if now - c.first_seen > call_max_seconds]
    if stale:
        calls = [c for c in calls if c.call_id not in stale]
        if prune:
            # A HANGUP that never arrived must not hold a user Busy forever.
            log.warning("user %s: dropping %d call(s) older than %ds", user_id, len(stale), call_max_seconds)
            await UserStateStore(redis).forget_calls(user_id, stale, now)
    bridge = parse_bridge(raw_bridge)
    if bridge.writing_at is not None and prune:
        # A write began and its end was never recorded: the process died in between (the claim
        # makes this reconcile the user's only writer).  Whether STARFACE took it is unknown, so
        # nothing counts as applied and both values are written again.
        bridge = dataclasses.replace(bridge, applied_dnd=None, applied_text=None)
    session = TeamsSession(bridge.session, bridge.session_cleared_at) if bridge.session is not None else None
    user = ObservedUser(
        teams=TeamsPresence(observed.availability, observed.activity) if observed else None,
        teams_observed_at=observed.received_at if observed else None,
        own_teams=bridge.own_teams,
        calls=tuple(c.state for c in calls),
        last_call_ended_at=bridge.last_call_ended_at,
        bridge_session=session,
        groups=await groups(login) if login else frozenset(),
        applied_dnd=bridge.applied_dnd,
        applied_text=bridge.applied_text,
        shown=(
            StarfaceShown(bridge.seen_dnd, bridge.seen_text, bridge.seen_at)
            if bridge.seen_is_fresh and bridge.seen_at is not None
            else None
        ),
        dnd_override=(
            DndOverride(bridge.override_dnd, bridge.override_since or 0.0, bridge.override_teams)
            if bridge.override_dnd is not None
            else None
        ),
    )
    return Inputs(user, observed, bridge, calls, login)


class Reconciler:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        mapping: Mapping,
        starface: StarfaceGateway,
        teams: TeamsGateway,
        partitions: Partitions,
        clock: Callable[[], float] = time.time,
        groups: Groups = _no_groups,
        presence_seconds: int = 300,
        call_max_seconds: float = 12 * 3600,
        hold_seconds: float = 15.0,
        concurrency: int = 20,
        dnd_policy: str = DND_RESPECT,
        rewrites_per_hour: int = 6,
    ) -> None:
        self.redis = redis
        self.mapping = mapping
        self.starface = starface
        self.teams = teams
        self.clock = clock
        self.groups = groups
        self.presence_seconds = presence_seconds
        # Re-send well before expiry: a slow Graph answer must not let the session lapse.
        self.refresh_margin = max(60.0, presence_seconds * 0.4)
        self.call_max_seconds = call_max_seconds
        self.dnd_policy = dnd_policy
        self.rewrites_per_hour = rewrites_per_hour
        self.state = UserStateStore(redis)
        self.identity = IdentityStore(redis)
        self.hold_seconds = hold_seconds
        self.schedule = Schedule(redis, partitions, hold_seconds=hold_seconds)
        # Users this process is reconciling now: their claims are extended while the work lasts.
        self.held: set[str] = set()
        # Users whose STARFACE write failed because the PBX was down: due at once when it is back.
        self.waiting: dict[str, set[str]] = {STARFACE: set(), GRAPH: set()}
        self._background: set[asyncio.Task[None]] = set()
        self.decisions = DecisionLog(redis)
        self.concurrency = concurrency
        self._limit = asyncio.Semaphore(concurrency)
        self.reconciled = 0
        # Set when this process marks users due: its loop claims them at once instead of at the
        # next poll (the poll remains for users other processes mark).
        self._due_now = asyncio.Event()

    # -- triggers ------------------------------------------------------------------------------

    async def on_presence(self, changes: list[PresenceChange]) -> None:
        """Worker listener: keep the user's own Teams state, then mark the user due.

        Every change is judged here as either the echo of the bridge's own session or the user's
        own state, and the newest own state (by version, not by arrival) is kept.  A reconcile
        sees only the newest observed presence, so without this a burst like "Offline, then the
        echo of our session", or the same two arriving in reverse order, would hide that the
        user's own state became Offline.
        """
        now = self.clock()
        by_user: dict[str, list[PresenceChange]] = {}
        for change in changes:
            by_user.setdefault(change.user_id, []).append(change)
        users = sorted(by_user)
        # Whole batch: one round trip to read, one to offer, one to mark.
        async with self.redis.pipeline(transaction=False) as pipe:
            for user_id in users:
                pipe.hgetall(keys.user_bridge(user_id))
                pipe.hget(keys.IDENTITY_LOGIN_BY_USER, user_id)
            replies = await pipe.execute()
        offers = []
        for i, user_id in enumerate(users):
            bridge, raw_login = parse_bridge(replies[2 * i]), replies[2 * i + 1]
            login = None if raw_login is None else decoded(raw_login)
            groups = await self.groups(login) if login and self.mapping.groups else frozenset()
            table = self.mapping.table_for(groups)
            session = TeamsSession(bridge.session, bridge.session_cleared_at) if bridge.session else None
            for change in by_user[user_id]:
                presence = TeamsPresence(change.availability, change.activity)
                observed = ObservedUser(
                    teams=presence, teams_observed_at=change.received_at, bridge_session=session
                )
                if not echo_of_bridge(observed, table, now)[0]:
                    offers.append(
                        self.state.offer_own_call(user_id, presence, change.sequence, change.received_at)
                    )
        await run_scripts(self.redis, offers, raise_on_error=True)
        await self._mark(users, now)

    async def handle_calls(self, entries: list[Entry]) -> dict[str, str]:
        """Stream handler for STARFACE call events: update the user's calls, mark the user due."""
        failures: dict[str, str] = {}
        due: list[str] = []
        for entry in entries:
            try:
                event = CallEvent.from_fields(entry.fields)
            except CallFormatError as exc:
                failures[entry.id] = str(exc)
                continue
            user_id = await self.identity.user_for(event.login)
            if user_id is None:
                log.info("call event for login %s, which is not linked to a Teams user; ignored", event.login)
                continue
            if await self.state.apply_call(user_id, event):
                due.append(user_id)
        await self._mark(due, self.clock())
        return failures

    def back(self, service: str) -> None:
        """``service`` (STARFACE or GRAPH) answers again: everyone who waited for it is due now,
        not at their backoff."""
        waiting = sorted(self.waiting[service])
        self.waiting[service].clear()
        if not waiting:
            return
        task = asyncio.get_running_loop().create_task(self._mark(waiting, self.clock()))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def mark_all(self, user_ids: Iterable[str]) -> None:
        """After a mapping or directory change: everyone is reconciled once more."""
        await self._mark(list(user_ids), self.clock())

    async def _mark(self, user_ids: list[str], at: float) -> None:
        """Due at ``at``; this process's loop claims them at once instead of at its next poll."""
        await self.schedule.mark(user_ids, at)
        if user_ids:
            self._due_now.set()

    async def adopt_mapping(self) -> bool:
        """Record the mapping this process applies; if the bridge last ran with another one, every
        linked user is reconciled once more, so a changed mapping reaches users without waiting
        for their next Teams change.  Returns whether the mapping changed."""
        # Where the mapping came from is left out: the same table saved again is no change.
        unnamed = dataclasses.replace(self.mapping, source="")
        digest = hashlib.sha256(format_table(unnamed).encode("utf-8")).hexdigest()
        previous = await self.redis.set(keys.MAPPING_DIGEST, digest, get=True)
        if previous is not None and decoded(previous) == digest:
            return False
        await self.mark_all((await self.identity.all()).keys())
        return True

    # -- passes --------------------------------------------------------------------------------

    async def run_due(self, limit: int = 200) -> int:
        """Reconcile every user due now (burst mode); returns how many were reconciled."""
        users = await self.schedule.claim(self.clock(), limit)
        await asyncio.gather(*(self._reconcile_claimed(u) for u in users))
        return len(users)

    async def drain(self, max_rounds: int = 100) -> int:
        """Run passes until nobody is due now."""
        total = 0
        for _ in range(max_rounds):
            handled = await self.run_due()
            if not handled:
                break
            total += handled
        return total

    async def run(self, stopping: Callable[[], bool], idle_seconds: float = 0.05) -> None:
        """Production loop: a pool of ``concurrency`` users in flight, refilled as each one ends.

        A slow STARFACE answer for one user holds only that user's slot; the others keep going.
        """
        inflight: set[asyncio.Task[None]] = set()
        keeper = asyncio.create_task(self._keep_claims(), name="reconciler-claims")
        try:
            while not stopping():
                free = self.concurrency - len(inflight)
                claimed: list[str] = []
                self._due_now.clear()
                if free > 0:
                    try:
                        claimed = await self.schedule.claim(self.clock(), free)
                    except (OSError, aioredis.RedisError) as exc:
                        log.warning("reconciler: storage unavailable (%s); retrying", type(exc).__name__)
                        await asyncio.sleep(1.0)
                for user_id in claimed:
                    task = asyncio.create_task(self._reconcile_claimed(user_id, limited=False))
                    inflight.add(task)
                    task.add_done_callback(inflight.discard)
                if not claimed:
                    # With every slot busy only a finished user frees one; a new mark cannot help.
                    woken = asyncio.ensure_future(self._due_now.wait()) if free > 0 else None
                    await asyncio.wait(
                        [*inflight, *([woken] if woken else [])],
                        timeout=idle_seconds,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    if woken is not None:
                        woken.cancel()
        finally:
            # Finish what was claimed: a released user is due again, an abandoned one waits a hold.
            await asyncio.gather(*inflight, return_exceptions=True)
            keeper.cancel()

    async def _keep_claims(self) -> None:
        """Extend the claims of the users in work, a few times per hold, for as long as they last."""
        while True:
            await asyncio.sleep(self.hold_seconds / 3)
            try:
                await self.schedule.extend(sorted(self.held), self.clock() + self.hold_seconds)
            except (OSError, aioredis.RedisError) as exc:
                log.warning("reconciler: cannot extend claims (%s)", type(exc).__name__)

    async def _reconcile_claimed(self, user_id: str, *, limited: bool = True) -> None:
        next_due: float | None = self.clock() + 5.0
        self.held.add(user_id)
        try:
            async with self._limit if limited else contextlib.nullcontext():
                with metrics.RECONCILE_SECONDS.time():
                    next_due = await self.reconcile(user_id)
        except Exception:
            # Storage trouble or a bug for one user must not stop the others; retry this one later.
            log.exception("reconcile of user %s failed", user_id)
        finally:
            self.held.discard(user_id)
            await self.schedule.release(user_id, next_due)

    # -- one user ------------------------------------------------------------------------------

    async def reconcile(self, user_id: str) -> float | None:
        """One level-triggered pass for one user; returns when the user is next due (or None)."""
        now = self.clock()
        inputs = await gather_inputs(
            self.redis,
            user_id,
            now,
            # Without group overrides the groups decide nothing: no read for them.
            groups=self.groups if self.mapping.groups else _no_groups,
            call_max_seconds=self.call_max_seconds,
        )
        user, observed, bridge, calls, login = (
            inputs.user,
            inputs.observed,
            inputs.bridge,
            inputs.calls,
            inputs.login,
        )
        decision = decide(user, self.mapping, now=now, dnd_policy=self.dnd_policy)
        outcome = _Outcome()
        self._keep_override(decision, bridge, outcome)
        await self._apply_starface(user_id, decision, bridge, login, outcome)
        await self._apply_teams(user_id, decision, bridge, outcome)
        for service, waiting in self.waiting.items():
            if service in outcome.down:
                waiting.add(user_id)
            else:
                waiting.discard(user_id)
        # own_teams is written only by on_presence, which judges every change in order.
        if decision.drop_bridge_session and not outcome.updates.get("session"):
            outcome.updates.update(session=None, session_cleared_at=None, session_expires_at=None)
        if outcome.errors:
            outcome.updates.update(failures=bridge.failures + 1, last_error="; ".join(outcome.errors)[:500])
        elif bridge.failures or bridge.last_error:
            outcome.updates.update(failures=0, last_error=None)
        next_due = self._next_due(decision, bridge, outcome, now)
        record = self._record(user_id, login, user, observed, calls, decision, outcome, now)
        # The bridge record and the decision are keys of one user: stored at once, one round trip.
        await self.state.update_bridge_and_log(user_id, outcome.updates, log_entry(record))
        self.reconciled += 1
        return next_due

    def _keep_override(self, decision: Decision, bridge: BridgeRecord, outcome: _Outcome) -> None:
        """Store the user's own DND that stands, or forget the one that ended."""
        kept = decision.dnd_override
        if kept is None:
            if bridge.override_dnd is not None:
                outcome.updates.update(override_dnd=None, override_since=None, override_teams=None)
            return
        if bridge.override_dnd is None:
            metrics.STARFACE_DND_OVERRIDES.labels(self.dnd_policy).inc()
        if (bridge.override_dnd, bridge.override_since, bridge.override_teams) != (
            kept.dnd,
            kept.since,
            kept.teams,
        ):
            outcome.updates.update(
                override_dnd=kept.dnd, override_since=kept.since, override_teams=kept.teams
            )

    async def _restore_allowed(self, user_id: str, field_name: str, what: str, outcome: _Outcome) -> bool:
        """Whether the hour's rewrite budget allows restoring ``field_name``; a refusal is counted,
        recorded and brings the user back when the budget opens again."""
        now = self.clock()
        budget = await self.state.take_rewrite(user_id, now, self.rewrites_per_hour)
        if budget.taken:
            metrics.STARFACE_REWRITES.labels(field_name, "written").inc()
            return True
        metrics.STARFACE_REWRITES.labels(field_name, "capped").inc()
        outcome.actions.append(f"STARFACE restore {what}")
        outcome.results.append(
            f"capped: {budget.used} restore(s) in the last hour, STARFACE_REWRITES_PER_HOUR="
            f"{self.rewrites_per_hour}"
        )
        if budget.reopens_at is not None:
            outcome.recheck_at = budget.reopens_at
        return False

    async def _apply_starface(
        self, user_id: str, decision: Decision, bridge: BridgeRecord, login: str | None, outcome: _Outcome
    ) -> None:
        wanted = decision.starface
        changes: list[tuple[str, Callable[[], Awaitable[None]], dict[str, object]]] = []
        if login is None:
            if wanted.dnd is not None or wanted.text is not None:
                outcome.actions.append("STARFACE")
                outcome.results.append("skipped: no STARFACE login linked to this Teams user")
            return
        if wanted.dnd is not None and wanted.dnd != decision.shown_dnd:
            dnd = wanted.dnd
            # The bridge wrote this already and someone else changed it: a restore, within budget.
            restore = dnd == bridge.applied_dnd and not decision.dnd_override_ended
            if restore and self.dnd_policy == DND_ENFORCE:
                metrics.STARFACE_DND_OVERRIDES.labels(DND_ENFORCE).inc()
            if not restore or await self._restore_allowed(
                user_id, "dnd", f"DND {'on' if dnd else 'off'}", outcome
            ):
                changes.append(
                    (
                        f"STARFACE DND {'on' if dnd else 'off'}" + (" (restore)" if restore else ""),
                        lambda: self.starface.set_dnd(login, dnd),
                        {"applied_dnd": dnd},
                    )
                )
        elif wanted.dnd is not None and wanted.dnd != bridge.applied_dnd:
            # STARFACE already shows what is wanted (the user set it): adopt it, write nothing.
            outcome.updates.update(applied_dnd=wanted.dnd)
        if wanted.text is not None and wanted.text != decision.shown_text:
            text = wanted.text
            restore = text == bridge.applied_text
            if not restore or await self._restore_allowed(user_id, "text", f"status text {text!r}", outcome):
                changes.append(
                    (
                        f"STARFACE status text {text!r}" + (" (restore)" if restore else ""),
                        lambda: self.starface.set_status_text(login, text),
                        {"applied_text": text},
                    )
                )
        elif wanted.text is not None and wanted.text != bridge.applied_text:
            outcome.updates.update(applied_text=wanted.text)
        if not changes:
            return
        # Write-ahead: a read-back that overlaps this write must not be taken for someone
        # else's change (service.bridge.readback).
        await self.state.update_bridge(user_id, writing_at=self.clock())
        # DND and text are independent writes: sending them together halves the wait on the PBX.
        results = await asyncio.gather(*(call() for _, call, _ in changes), return_exceptions=True)
        outcome.updates.update(writing_at=None, written_at=self.clock())
        for (action, _, update), result in zip(changes, results, strict=True):
            if isinstance(result, (CredentialsMissing, CredentialsUnreadable, LoginRefused)):
                outcome.slow_retry = True
                outcome.failed(action, result)
            elif isinstance(result, GatewayError):
                outcome.failed(action, result)
            elif isinstance(result, BaseException):
                raise result
            else:
                outcome.updates.update(update)
                outcome.done(action, "ok", self.clock())

    async def _apply_teams(
        self, user_id: str, decision: Decision, bridge: BridgeRecord, outcome: _Outcome
    ) -> None:
        wanted = decision.teams.presence
        now = self.clock()
        active = bridge.session is not None and bridge.session_cleared_at is None
        if wanted is not None:
            expires = bridge.session_expires_at or 0.0
            same = active and bridge.session is not None and bridge.session.same_as(wanted)
            if same and now < expires - self.refresh_margin:
                return
            action = f"Teams setPresence {wanted} for {self.presence_seconds // 60} min" + (
                " (refresh)" if same else ""
            )
            if not same:
                # Write-ahead: Graph may echo the session before this call returns, and the
                # echo must be recognised as ours when the worker judges it.
                await self.state.update_bridge(user_id, session=wanted, session_cleared_at=None)
            try:
                await self.teams.set_presence(user_id, wanted, self.presence_seconds)
            except Exception as exc:  # network, throttling, Graph refusals: all retried with backoff
                outcome.failed(action, exc, now)
                return
            outcome.updates.update(
                session=wanted, session_cleared_at=None, session_expires_at=now + self.presence_seconds
            )
            outcome.done(action, "ok", self.clock())
        elif active:
            try:
                await self.teams.clear_presence(user_id)
            except Exception as exc:
                outcome.failed("Teams clearPresence", exc, now)
                return
            # The session's presence is kept for the echo grace of service.bridge.desired.
            outcome.updates.update(session_cleared_at=now, session_expires_at=None)
            outcome.done("Teams clearPresence", "ok", self.clock())

    def _next_due(
        self, decision: Decision, bridge: BridgeRecord, outcome: _Outcome, now: float
    ) -> float | None:
        candidates: list[float] = []
        if outcome.errors:
            failures = bridge.failures + 1
            retry = now + (_SLOW_RETRY_SECONDS if outcome.slow_retry else backoff(failures))
            candidates.append(max(retry, outcome.not_before or 0.0))
        if decision.recheck_at is not None:
            candidates.append(decision.recheck_at)
        if outcome.recheck_at is not None:
            candidates.append(outcome.recheck_at)
        expires = outcome.updates.get("session_expires_at", bridge.session_expires_at)
        if decision.teams.presence is not None and isinstance(expires, float):
            candidates.append(expires - self.refresh_margin)
        cleared = outcome.updates.get("session_cleared_at", bridge.session_cleared_at)
        if isinstance(cleared, float) and not decision.drop_bridge_session:
            # Re-decide once the echo grace is over, so the cleared session gets forgotten.
            candidates.append(cleared + self.mapping.base.switches.echo_grace_seconds + 1.0)
        return min(candidates) if candidates else None

    def _record(
        self,
        user_id: str,
        login: str | None,
        user: ObservedUser,
        observed: ObservedPresence | None,
        calls: list[Call],
        decision: Decision,
        outcome: _Outcome,
        now: float,
    ) -> DecisionRecord:
        inputs: dict[str, Any] = {
            "teams": str(user.teams) if user.teams else "unknown",
            "own_teams": str(user.own_teams) if user.own_teams else "unknown",
            "calls": ",".join(f"{c.call_id[:8]}:{c.state}" for c in calls) or "none",
            "bridge_session": (
                "none"
                if user.bridge_session is None
                else f"{user.bridge_session.presence}{'' if user.bridge_session.active else ' (cleared)'}"
            ),
            "echo": decision.echo,
        }
        if user.shown is not None:
            inputs["starface_shows"] = (
                f"DND {'unknown' if user.shown.dnd is None else ('on' if user.shown.dnd else 'off')}, "
                f"text {user.shown.text!r}"
            )
        if decision.dnd_override is not None:
            inputs["own_dnd"] = "on" if decision.dnd_override.dnd else "off"
        if decision.group:
            inputs["group"] = decision.group
        trigger = "presence" if observed is not None else "calls"
        started = now
        if observed is not None and observed.received_at:
            started = observed.received_at
        newest_call = max((c.first_seen for c in calls), default=None)
        if user.last_call_ended_at is not None:
            newest_call = max(newest_call or 0.0, user.last_call_ended_at)
        if newest_call is not None and newest_call > started:
            trigger, started = "call", newest_call
        # A restore answers the read-back that found the overwrite, not the last Teams change.
        shown = user.shown
        if (
            shown is not None
            and shown.at > started
            and (
                (shown.dnd is not None and shown.dnd != user.applied_dnd)
                or (shown.text is not None and shown.text != user.applied_text)
            )
        ):
            trigger, started = "read-back", shown.at
        latency = (outcome.applied_at - started) * 1000 if outcome.applied_at is not None else None
        if latency is not None:
            side = outcome.actions[-1].split()[0]
            metrics.RECONCILE_APPLY_LATENCY_SECONDS.labels(side).observe(latency / 1000)
        return DecisionRecord(
            at=now,
            user_id=user_id,
            login=login,
            trigger=trigger,
            inputs=inputs,
            rule=decision.rule,
            actions=outcome.actions,
            results=outcome.results,
            latency_ms=latency,
        )
