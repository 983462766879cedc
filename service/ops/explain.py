"""``explain`` (why a user shows what they show) and ``mapping preview`` (what a mapping would do)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from service.bridge.decisions import DecisionLog
from service.bridge.desired import decide
from service.bridge.identity import IdentityStore
from service.bridge.mapping import Mapping
from service.bridge.reconciler import gather_inputs
from service.bridge.userstate import BridgeRecord, UserStateStore
from service.starface.directory import DirectoryStore
from service.starface.rest import StarfaceUser


class UnknownPerson(Exception):
    """Neither a selected STARFACE login nor the e-mail of one."""

    def __init__(self, who: str) -> None:
        self.who = who
        super().__init__(f"{who!r} is neither the login ID nor the e-mail of a bridged STARFACE user")


@dataclass(frozen=True)
class Person:
    login: str | None
    user_id: str | None
    directory: StarfaceUser | None


async def find(redis: aioredis.Redis, who: str) -> Person:
    directory = DirectoryStore(redis)
    identity = IdentityStore(redis)
    entry = await directory.by_email(who) if "@" in who else await directory.by_login(who)
    login = entry.login if entry else (None if "@" in who else who)
    user_id = await identity.user_for(login) if login else None
    if entry is None and user_id is None:
        raise UnknownPerson(who)
    return Person(login, user_id, entry)


async def explain(
    redis: aioredis.Redis,
    who: str,
    *,
    limit: int = 50,
    now: float | None = None,
    dnd_policy: str | None = None,
    rewrites_per_hour: int | None = None,
) -> str:
    """``dnd_policy`` and ``rewrites_per_hour`` are the settings in force (STARFACE_DND_POLICY,
    STARFACE_REWRITES_PER_HOUR); ``None`` where the caller does not know them."""
    person = await find(redis, who)
    now = time.time() if now is None else now
    entry = person.directory
    unlinked = "not linked yet (no Entra user found for the e-mail, or no scheduler pass yet)"
    lines = [
        f"STARFACE login {person.login or '?'}"
        + (f", {entry.display_name} <{entry.email}>" if entry else " (not in the selected directory)"),
        f"Teams user id  {person.user_id or unlinked}",
    ]
    if entry and entry.groups:
        lines.append(f"groups         {', '.join(entry.groups)}")
    if person.user_id is None:
        return "\n".join(lines)
    inputs = await gather_inputs(redis, person.user_id, now, prune=False)
    bridge = inputs.bridge
    observed = inputs.observed
    teams = f"{observed.availability}/{observed.activity}" if observed else "not observed yet"
    if observed and observed.sequence:
        teams += f" (seq {observed.sequence}, via {observed.source})"
    session = _session(bridge.session, bridge.session_cleared_at, bridge.session_expires_at, now)
    lines += [
        "now:",
        f"  Teams presence  {teams}",
        f"  own Teams state {bridge.own_teams or 'unknown'}",
        f"  STARFACE calls  {', '.join(f'{c.call_id}: {c.state}' for c in inputs.calls) or 'none'}",
        f"  applied         DND {_yes_no(bridge.applied_dnd)}, status text {bridge.applied_text!r}",
        f"  Teams session   {session}",
    ]
    view = await read_back_view(
        redis, person.user_id, bridge, now, dnd_policy=dnd_policy, rewrites_per_hour=rewrites_per_hour
    )
    lines += [
        f"  STARFACE shows  {view.shows}",
        f"  user's own DND  {view.own_dnd}",
        f"  restores        {view.restores}",
    ]
    if bridge.last_error:
        lines.append(f"  failing         {bridge.failures} time(s) in a row: {bridge.last_error}")
    records = await DecisionLog(redis).recent(person.user_id, limit)
    lines.append(f"last {len(records)} decision(s), newest first:")
    lines += [record.format() for record in records] or ["  none yet"]
    return "\n".join(lines)


@dataclass(frozen=True)
class ReadBackView:
    """What the read-back knows about a user, one sentence each (``explain``, the console)."""

    shows: str
    own_dnd: str
    restores: str


async def read_back_view(
    redis: aioredis.Redis,
    user_id: str,
    bridge: BridgeRecord,
    now: float,
    *,
    dnd_policy: str | None,
    rewrites_per_hour: int | None,
) -> ReadBackView:
    return ReadBackView(
        shows=_shown(bridge, now),
        own_dnd=_own_dnd(bridge, dnd_policy),
        restores=await _restores(redis, user_id, now, rewrites_per_hour),
    )


def _shown(bridge: BridgeRecord, now: float) -> str:
    """What the last read-back found, and whether it still counts (newer than the last write)."""
    if bridge.seen_at is None:
        return "not read back yet (STARFACE_READ_BACK, every keepAlive)"
    text = "unknown" if bridge.seen_text is None else repr(bridge.seen_text)
    found = f"DND {_yes_no(bridge.seen_dnd)}, status text {text} (read {now - bridge.seen_at:.0f}s ago)"
    if not bridge.seen_is_fresh:
        return f"{found}; the bridge wrote since: the next read-back tells"
    differs = []
    if (
        bridge.seen_dnd is not None
        and bridge.applied_dnd is not None
        and bridge.seen_dnd != bridge.applied_dnd
    ):
        differs.append("DND")
    if (
        bridge.seen_text is not None
        and bridge.applied_text is not None
        and bridge.seen_text != bridge.applied_text
    ):
        differs.append("status text")
    return f"{found}; " + (
        f"{' and '.join(differs)} differ from what the bridge applied" if differs else "as applied"
    )


def _own_dnd(bridge: BridgeRecord, policy: str | None) -> str:
    named = f"policy {policy} (STARFACE_DND_POLICY)" if policy else "policy: see STARFACE_DND_POLICY"
    if bridge.override_dnd is None:
        return f"none in force; {named}"
    return (
        f"{_yes_no(bridge.override_dnd)}, switched by the user and respected until their Teams state "
        f"changes from {bridge.override_teams or 'unknown'}; {named}"
    )


async def _restores(redis: aioredis.Redis, user_id: str, now: float, limit: int | None) -> str:
    used = await UserStateStore(redis).rewrites_in_hour(user_id, now)
    bound = f"at most {limit}" if limit is not None else "bounded"
    return f"{used} in the last hour ({bound} per STARFACE_REWRITES_PER_HOUR)"


def _yes_no(value: bool | None) -> str:
    return "unknown" if value is None else ("on" if value else "off")


def _session(presence: object, cleared_at: float | None, expires_at: float | None, now: float) -> str:
    if presence is None:
        return "none"
    if cleared_at is not None:
        return f"{presence}, cleared {now - cleared_at:.0f}s ago"
    return f"{presence}, expires in {(expires_at or now) - now:.0f}s"


@dataclass(frozen=True)
class PreviewRow:
    login: str
    teams: str
    changes: tuple[str, ...]


async def preview_changes(
    redis: aioredis.Redis, mapping: Mapping, *, now: float | None = None
) -> list[PreviewRow]:
    """What the mapping would change for every linked user now, without applying anything."""
    now = time.time() if now is None else now
    directory = DirectoryStore(redis)
    rows = []
    links = await IdentityStore(redis).all()
    for user_id, login in sorted(links.items(), key=lambda item: item[1]):
        inputs = await gather_inputs(redis, user_id, now, groups=directory.groups, prune=False)
        decision = decide(inputs.user, mapping, now=now)
        bridge = inputs.bridge
        changes = []
        wanted = decision.starface
        if wanted.dnd is not None and wanted.dnd != bridge.applied_dnd:
            changes.append(f"DND {_yes_no(bridge.applied_dnd)} -> {_yes_no(wanted.dnd)}")
        if wanted.text is not None and wanted.text != bridge.applied_text:
            changes.append(f"text {bridge.applied_text!r} -> {wanted.text!r}")
        active = bridge.session if bridge.session_cleared_at is None else None
        target = decision.teams.presence
        if (target is None) != (active is None) or (target and active and not target.same_as(active)):
            changes.append(f"Teams session {active or 'none'} -> {target or 'none'}")
        rows.append(PreviewRow(login, str(inputs.user.teams or "unknown"), tuple(changes)))
    return rows


async def preview(redis: aioredis.Redis, mapping: Mapping, *, now: float | None = None) -> list[str]:
    """``mapping preview``'s lines: one per linked user."""
    rows = await preview_changes(redis, mapping, now=now)
    lines = [
        f"{row.login:>8}  Teams {row.teams}: " + ("; ".join(row.changes) if row.changes else "no change")
        for row in rows
    ]
    return lines or ["no bridged users yet (the scheduler links STARFACE logins to Teams users)"]
