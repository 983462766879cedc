"""The desired STARFACE and Teams state of one user, as a pure function of observed state.

No I/O and no clock: ``decide(user, mapping, now=...)`` reads only its arguments, so the same
inputs always give the same ``Decision`` and every decision can be replayed and explained.
The reconciler applies the difference between a decision and what it last applied.

Inputs (``ObservedUser``), all timestamps in seconds on the caller's one clock:

- ``teams``: the newest observed aggregated Teams presence; ``teams_observed_at`` when it arrived.
- ``own_teams``: the last observed Teams presence that was *not* explained by the bridge's own
  session, i.e. the user's own state.  The reconciler stores ``Decision.own_teams`` back here
  after every decision; it is the observed presence unless that was the bridge's echo.
- ``calls``: the state of each STARFACE call of the user that has not hung up.
- ``last_call_ended_at``: when the user's last STARFACE call ended.
- ``bridge_session``: the presence the bridge's Teams application session holds, or held until
  ``cleared_at``; ``None`` once the reconciler forgot it (``Decision.drop_bridge_session``).
- ``groups``: the user's STARFACE groups (ids and names), which pick a group override.

Teams side (the bridge's application session; ``None`` means no session / clear it):

1. ``teams_presence_from_calls`` off: ``None``.
2. At least one call that counts: ``call_presence``.  ``CONNECTED`` (and the consult/conference
   variants of it) always counts; ``RINGING``, ``PROCEEDING`` and ``RINGBACK`` count only with
   ``ringing_counts``.  ``HANGUP`` and unknown states never count.
3. No call counts, the session is still active and the last call ended less than
   ``call_end_debounce_seconds`` ago: still ``call_presence`` (a transfer or a call-back must not
   flap Teams), with ``recheck_at`` at the end of the debounce.  Without an active session the
   debounce holds nothing, so a missed call never sets a presence afterwards.
4. Otherwise ``None``.

STARFACE side:

1. No Teams presence observed yet: leave STARFACE as it is.
2. Echo suppression.  The bridge's session explains the observed presence when the session is
   active, or was cleared less than ``echo_grace_seconds`` ago (Graph reports changes minutes
   late), and the observed presence equals the session's presence.  Equality is the whole test
   because of Graph's aggregation: a user-preferred presence outranks every session, and among
   sessions DoNotDisturb > Busy > Available > Away; so while the bridge holds ``Busy/InACall``, an
   observed ``DoNotDisturb/*`` is another session or a preferred presence dominating, an observed
   ``Available`` is the user's own state before Graph caught up, and an observed ``Busy/InAMeeting``
   or ``Busy/InAConferenceCall`` is another session of the same rank: none of those is the echo,
   and all of them map.  An explained presence maps ``own_teams`` instead (nothing is changed
   when it is unknown), so the bridge never sets STARFACE DND with a Teams-call text because of
   its own session.  Limit: a real Teams call that looks exactly like the bridge's session (the
   same pair while the session is active) cannot be told apart from it and is treated as echo;
   the user is on a STARFACE call at that moment anyway.
3. The row of the user's table (``Mapping.table_for(groups)``, lookup order in
   ``service.bridge.mapping``) gives DND if ``set_dnd`` and the text if ``set_status_text``; a switch
   that is off yields ``None``: leave that field as it is.

STARFACE read-back (docs/readback.md).  ``shown`` is what ``getUserState`` found after the
bridge's last write (``None`` when there is no such read).  It does not change what the mapping
wants; it changes what the bridge believes STARFACE shows (``Decision.shown_dnd``/``shown_text``),
so the apply step writes again when someone else overwrote the text.  A DND that differs from
what the bridge applied was switched by the user (phone key, app): with ``dnd_policy`` "respect"
it becomes ``dnd_override`` and the desired DND is ``None`` (leave it) until the Teams state the
mapping maps differs from the one the override began under; then the mapping applies again
(``dnd_override_ended``).  With "enforce" the mapping's DND is written again.

A cleared session is forgotten (``drop_bridge_session``) when its grace has passed, or when a
presence that differs from it arrived after the clear: Graph has caught up, and a later identical
presence is a real Teams call.  A differing presence that arrived *before* the clear does not end
the grace, because the echo of a short call can still be on its way.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from service.bridge.mapping import Mapping, RowMatch, Table
from service.graph.presence import TeamsPresence

CONNECTED_STATES = frozenset({"CONNECTED", "CONSULT", "CONFERENCE_ACTIVE", "CONFERENCE_CONSULT"})
RINGING_STATES = frozenset({"RINGING", "PROCEEDING", "RINGBACK"})

# Graph's session aggregation order (docs/protocols.md, "setPresence and clearPresence");
# only used to explain decisions.
_SESSION_RANK = {"away": 0, "available": 1, "busy": 2, "donotdisturb": 3}


@dataclass(frozen=True)
class TeamsSession:
    """The presence the bridge's own Teams session holds (``cleared_at is None``) or last held."""

    presence: TeamsPresence
    cleared_at: float | None = None

    @property
    def active(self) -> bool:
        return self.cleared_at is None


DND_RESPECT = "respect"
DND_ENFORCE = "enforce"


@dataclass(frozen=True)
class StarfaceShown:
    """What a read-back found on STARFACE after the bridge's last write; ``None``: not said."""

    dnd: bool | None
    text: str | None
    at: float


@dataclass(frozen=True)
class DndOverride:
    """A DND the user switched themselves, and the Teams state the mapping mapped at the time."""

    dnd: bool
    since: float
    teams: TeamsPresence | None


@dataclass(frozen=True)
class ObservedUser:
    """Everything known about one user; see the module docstring for each field's meaning."""

    teams: TeamsPresence | None = None
    teams_observed_at: float | None = None
    own_teams: TeamsPresence | None = None
    calls: tuple[str, ...] = ()
    last_call_ended_at: float | None = None
    bridge_session: TeamsSession | None = None
    groups: frozenset[str] = frozenset()
    applied_dnd: bool | None = None
    applied_text: str | None = None
    shown: StarfaceShown | None = None
    dnd_override: DndOverride | None = None


@dataclass(frozen=True)
class DesiredStarface:
    """``None`` in a field means: leave it as it is on STARFACE."""

    dnd: bool | None
    text: str | None
    row: str | None
    rule: str


@dataclass(frozen=True)
class DesiredTeams:
    """The presence the bridge's application session should hold; ``None``: no session."""

    presence: TeamsPresence | None
    rule: str


@dataclass(frozen=True)
class Decision:
    starface: DesiredStarface
    teams: DesiredTeams
    # The observed Teams presence is the bridge's own echo.
    echo: bool
    # Store back as ObservedUser.own_teams.
    own_teams: TeamsPresence | None
    # Forget ObservedUser.bridge_session: its echo can no longer arrive.
    drop_bridge_session: bool
    # Decide again at this time even without new input (debounce or echo grace ends).
    recheck_at: float | None
    # The group override that applied, if any.
    group: str | None
    rule: str
    # What STARFACE shows, as far as the bridge knows (read-back, else what it applied).
    shown_dnd: bool | None = None
    shown_text: str | None = None
    # The user's own DND that stands (store it); None: there is none (forget it).
    dnd_override: DndOverride | None = None
    # An override ended with this decision: the mapping's DND is written even if the bridge
    # applied the same before the user switched.
    dnd_override_ended: bool = False


def counting_calls(calls: tuple[str, ...], ringing_counts: bool) -> int:
    """How many of the call states count as "on a call"."""
    counted = CONNECTED_STATES | RINGING_STATES if ringing_counts else CONNECTED_STATES
    return sum(1 for state in calls if state.upper() in counted)


def echo_of_bridge(user: ObservedUser, table: Table, now: float) -> tuple[bool, str]:
    """Whether the observed Teams presence is the bridge's own echo, and a clause saying why."""
    session = user.bridge_session
    observed = user.teams
    if observed is None or session is None:
        return False, ""
    grace = table.switches.echo_grace_seconds
    if session.cleared_at is not None and now - session.cleared_at >= grace:
        return False, f"(the bridge cleared its {session.presence} more than {grace:g}s ago)"
    if observed.same_as(session.presence):
        when = "holds" if session.active else "cleared moments ago and may still echo"
        return True, f"is the echo of the bridge's session, which {when} {session.presence}"
    return False, _why_not_echo(observed, session.presence)


def _why_not_echo(observed: TeamsPresence, session: TeamsPresence) -> str:
    theirs = _SESSION_RANK.get(observed.availability.casefold())
    ours = _SESSION_RANK.get(session.availability.casefold())
    if theirs is None or ours is None:
        return f"differs from the bridge's {session}"
    if theirs > ours:
        return f"outranks the bridge's {session} (another session or a preferred presence)"
    if theirs < ours:
        return f"ranks below the bridge's {session} (Teams has not shown the bridge's session yet)"
    return f"is another session of the same rank as the bridge's {session}"


def desired_teams(user: ObservedUser, table: Table, now: float) -> tuple[DesiredTeams, float | None]:
    """The bridge session's desired presence, and when to decide again if it depends on time."""
    switches = table.switches
    if not switches.teams_presence_from_calls:
        return DesiredTeams(None, "teams_presence_from_calls is off: no bridge presence"), None
    count = counting_calls(user.calls, switches.ringing_counts)
    if count:
        kind = "connected or ringing" if switches.ringing_counts else "connected"
        return DesiredTeams(
            switches.call_presence, f"{count} {kind} STARFACE call(s): {switches.call_presence}"
        ), None
    session = user.bridge_session
    ended = user.last_call_ended_at
    if session is not None and session.active and ended is not None:
        until = ended + switches.call_end_debounce_seconds
        if now < until:
            rule = (
                f"last STARFACE call ended {now - ended:g}s ago: holding {switches.call_presence} "
                f"for the {switches.call_end_debounce_seconds:g}s debounce"
            )
            return DesiredTeams(switches.call_presence, rule), until
    return DesiredTeams(None, "no STARFACE call: no bridge presence"), None


def desired_starface(
    user: ObservedUser, table: Table, now: float
) -> tuple[DesiredStarface, bool, TeamsPresence | None]:
    """The desired STARFACE DND and text, whether the observed Teams presence is an echo, and the
    Teams state that was mapped (``None`` when none was)."""
    observed = user.teams
    if observed is None:
        return (
            DesiredStarface(None, None, None, "no Teams presence observed yet: STARFACE unchanged"),
            False,
            None,
        )
    echo, why = echo_of_bridge(user, table, now)
    lead = f"Teams {observed} {why}".rstrip()
    if not echo:
        return _from_row(table.lookup(observed.availability, observed.activity), table, lead), False, observed
    own = user.own_teams
    if own is None:
        return (
            DesiredStarface(None, None, None, f"{lead}; the user's own state is unknown: STARFACE unchanged"),
            True,
            None,
        )
    lead = f"{lead}; mapping the user's own Teams state {own}"
    return _from_row(table.lookup(own.availability, own.activity), table, lead), True, own


def _on_off(value: bool) -> str:
    return "on" if value else "off"


def users_dnd(
    user: ObservedUser, wanted: DesiredStarface, mapped: TeamsPresence | None, policy: str
) -> tuple[DesiredStarface, DndOverride | None, bool]:
    """Apply the DND policy to a DND the user switched themselves: the desired STARFACE state,
    the override that stands, and whether an override ended now (see the module docstring)."""
    shown, existing = user.shown, user.dnd_override
    if wanted.dnd is None:
        # DND is not managed now (set_dnd off, no Teams state known): nothing to respect or undo.
        return wanted, existing if policy == DND_RESPECT and mapped is None else None, False
    differs = shown is not None and shown.dnd is not None and user.applied_dnd is not None
    switched = differs and shown is not None and shown.dnd != user.applied_dnd
    if policy == DND_ENFORCE:
        if switched and shown is not None and shown.dnd is not None and shown.dnd != wanted.dnd:
            rule = (
                f"{wanted.rule}; the user switched DND {_on_off(shown.dnd)} themselves: enforcing the mapping"
            )
            return replace(wanted, rule=rule), None, False
        return wanted, None, False
    if existing is not None:
        if differs and not switched:
            rule = f"{wanted.rule}; the user switched their own DND back"
            return replace(wanted, rule=rule), None, False
        if mapped is not None and (existing.teams is None or not mapped.same_as(existing.teams)):
            rule = (
                f"{wanted.rule}; the user's own DND {_on_off(existing.dnd)} ended: Teams changed from "
                f"{existing.teams or 'unknown'} to {mapped}"
            )
            return replace(wanted, rule=rule), None, True
        return _respect(wanted, existing), existing, False
    if switched and shown is not None and shown.dnd is not None:
        override = DndOverride(shown.dnd, shown.at, mapped)
        return _respect(wanted, override), override, False
    return wanted, None, False


def _respect(wanted: DesiredStarface, override: DndOverride) -> DesiredStarface:
    rule = (
        f"{wanted.rule}; but the user switched DND {_on_off(override.dnd)} themselves: respected until "
        f"their Teams state changes from {override.teams or 'unknown'}"
    )
    return replace(wanted, dnd=None, rule=rule)


def _from_row(match: RowMatch, table: Table, lead: str) -> DesiredStarface:
    switches = table.switches
    dnd = match.row.dnd if switches.set_dnd else None
    text = match.row.text if switches.set_status_text else None
    dnd_part = "DND not managed (set_dnd off)" if dnd is None else f"DND {'on' if dnd else 'off'}"
    text_part = "text not managed (set_status_text off)" if text is None else f'text "{text}"'
    return DesiredStarface(dnd, text, match.key, f"{lead} -> {match.describe()}: {dnd_part}, {text_part}")


def _drop_session(user: ObservedUser, table: Table, now: float) -> bool:
    session = user.bridge_session
    if session is None or session.cleared_at is None:
        return False
    if now - session.cleared_at >= table.switches.echo_grace_seconds:
        return True
    observed, seen_at = user.teams, user.teams_observed_at
    return (
        observed is not None
        and seen_at is not None
        and seen_at > session.cleared_at
        and not observed.same_as(session.presence)
    )


def decide(user: ObservedUser, mapping: Mapping, *, now: float, dnd_policy: str = DND_RESPECT) -> Decision:
    """Desired STARFACE and Teams state of one user; pure (see the module docstring)."""
    override = mapping.override_for(user.groups)
    table = mapping.base if override is None else override.table
    starface, echo, mapped = desired_starface(user, table, now)
    starface, dnd_override, dnd_override_ended = users_dnd(user, starface, mapped, dnd_policy)
    shown = user.shown
    shown_dnd = user.applied_dnd
    if shown is not None and shown.dnd is not None:
        shown_dnd = shown.dnd
    elif user.dnd_override is not None:
        shown_dnd = user.dnd_override.dnd
    shown_text = shown.text if shown is not None and shown.text is not None else user.applied_text
    teams, debounce_until = desired_teams(user, table, now)
    drop = _drop_session(user, table, now)

    wake_times = [] if debounce_until is None else [debounce_until]
    session = user.bridge_session
    if echo and session is not None and session.cleared_at is not None and not drop:
        wake_times.append(session.cleared_at + table.switches.echo_grace_seconds)

    prefix = "" if override is None else f'group "{override.name}": '
    return Decision(
        starface=starface,
        teams=teams,
        echo=echo,
        own_teams=user.own_teams if echo or user.teams is None else user.teams,
        drop_bridge_session=drop,
        recheck_at=min(wake_times) if wake_times else None,
        group=None if override is None else override.name,
        rule=f"{prefix}STARFACE: {starface.rule}. Teams: {teams.rule}.",
        shown_dnd=shown_dnd,
        shown_text=shown_text,
        dnd_override=dnd_override,
        dnd_override_ended=dnd_override_ended,
    )
