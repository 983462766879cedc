"""Desired state: mapping, switches, calls, debounce, echo suppression; and that it is pure."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.bridge.desired import (
    CONNECTED_STATES,
    DND_ENFORCE,
    RINGING_STATES,
    Decision,
    DndOverride,
    ObservedUser,
    StarfaceShown,
    TeamsSession,
    counting_calls,
    decide,
)
from service.bridge.mapping import Mapping, default_mapping, parse_mapping
from service.graph.presence import ACTIVITIES, AVAILABILITIES, BUSY_IN_A_CALL, DND_PRESENTING, TeamsPresence

NOW = 1_000_000.0
AVAILABLE = TeamsPresence("Available", "Available")
MEETING = TeamsPresence("Busy", "InAMeeting")
DND = TeamsPresence("DoNotDisturb", "DoNotDisturb")
CONFERENCE = TeamsPresence("Busy", "InAConferenceCall")


def with_switches(**switches: object) -> Mapping:
    lines = [f"{name} = {_toml(value)}" for name, value in switches.items()]
    return parse_mapping('base = "de"\n[switches]\n' + "\n".join(lines) + "\n")


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def run(user: ObservedUser, mapping: Mapping | None = None, now: float = NOW) -> Decision:
    return decide(user, mapping or default_mapping("de"), now=now)


# -- Teams -> STARFACE without a bridge session ------------------------------------------------


def test_nothing_observed_leaves_starface_alone() -> None:
    decision = run(ObservedUser())
    assert (decision.starface.dnd, decision.starface.text, decision.starface.row) == (None, None, None)
    assert decision.starface.rule == "no Teams presence observed yet: STARFACE unchanged"
    assert decision.teams.presence is None
    assert decision.own_teams is None
    assert not decision.echo


@pytest.mark.parametrize(
    ("presence", "dnd", "text", "row"),
    [
        (AVAILABLE, False, "Verfügbar", "Available"),
        (MEETING, False, "Beschäftigt - In einem Meeting", "Busy/InAMeeting"),
        (BUSY_IN_A_CALL, True, "Im Gespräch", "Busy/InACall"),
        (CONFERENCE, True, "Im Gespräch", "Busy/InAConferenceCall"),
        (DND_PRESENTING, True, "Nicht Stören - In einer Präsentation", "DoNotDisturb/Presenting"),
        (DND, True, "Nicht Stören", "DoNotDisturb"),
        (TeamsPresence("Away", "OutOfOffice"), False, "Abwesend - Ausser Haus", "Away/OutOfOffice"),
        (TeamsPresence("Mystery", "Thing"), False, "Unbekannt", "PresenceUnknown"),
        (TeamsPresence("Busy", "Brainstorming"), False, "Beschäftigt", "Busy"),
    ],
)
def test_teams_presence_maps_to_starface(presence: TeamsPresence, dnd: bool, text: str, row: str) -> None:
    decision = run(ObservedUser(teams=presence))
    assert (decision.starface.dnd, decision.starface.text, decision.starface.row) == (dnd, text, row)
    assert decision.own_teams == presence
    assert not decision.echo


def test_rule_explains_the_row() -> None:
    decision = run(ObservedUser(teams=TeamsPresence("Mystery", "Thing")))
    assert decision.starface.rule == (
        'Teams Mystery/Thing -> default row "PresenceUnknown": DND off, text "Unbekannt"'
    )
    assert decision.rule == (
        'STARFACE: Teams Mystery/Thing -> default row "PresenceUnknown": DND off, text "Unbekannt". '
        "Teams: no STARFACE call: no bridge presence."
    )


def test_english_mapping() -> None:
    decision = run(ObservedUser(teams=BUSY_IN_A_CALL), default_mapping("en"))
    assert (decision.starface.dnd, decision.starface.text) == (True, "In a call")


def test_set_dnd_off_leaves_dnd_alone() -> None:
    decision = run(ObservedUser(teams=DND), with_switches(set_dnd=False))
    assert (decision.starface.dnd, decision.starface.text) == (None, "Nicht Stören")
    assert "DND not managed (set_dnd off)" in decision.starface.rule


def test_set_status_text_off_leaves_text_alone() -> None:
    decision = run(ObservedUser(teams=DND), with_switches(set_status_text=False))
    assert (decision.starface.dnd, decision.starface.text) == (True, None)
    assert "text not managed (set_status_text off)" in decision.starface.rule


def test_both_starface_switches_off() -> None:
    decision = run(ObservedUser(teams=DND), with_switches(set_dnd=False, set_status_text=False))
    assert (decision.starface.dnd, decision.starface.text) == (None, None)
    assert decision.starface.row == "DoNotDisturb"


# -- STARFACE calls -> Teams -------------------------------------------------------------------


def test_connected_call_sets_the_call_presence() -> None:
    decision = run(ObservedUser(calls=("CONNECTED",)))
    assert decision.teams.presence == BUSY_IN_A_CALL
    assert decision.teams.rule == "1 connected STARFACE call(s): Busy/InACall"
    assert decision.recheck_at is None


def test_call_presence_can_be_presenting() -> None:
    mapping = with_switches(call_presence="DoNotDisturb/Presenting")
    assert run(ObservedUser(calls=("CONNECTED",)), mapping).teams.presence == DND_PRESENTING


def test_several_calls() -> None:
    decision = run(ObservedUser(calls=("CONNECTED", "RINGING", "connected")))
    assert decision.teams.rule == "2 connected STARFACE call(s): Busy/InACall"


@pytest.mark.parametrize("state", ["RINGING", "PROCEEDING", "RINGBACK", "ringing"])
def test_ringing_counts_only_when_switched_on(state: str) -> None:
    assert run(ObservedUser(calls=(state,))).teams.presence is None
    decision = run(ObservedUser(calls=(state,)), with_switches(ringing_counts=True))
    assert decision.teams.presence == BUSY_IN_A_CALL
    assert decision.teams.rule == "1 connected or ringing STARFACE call(s): Busy/InACall"


@pytest.mark.parametrize("state", ["HANGUP", "", "PARKED", "SOMETHING_NEW"])
def test_other_call_states_never_count(state: str) -> None:
    assert run(ObservedUser(calls=(state,)), with_switches(ringing_counts=True)).teams.presence is None


def test_counting_calls() -> None:
    assert counting_calls(("CONNECTED", "RINGING", "HANGUP"), ringing_counts=False) == 1
    assert counting_calls(("CONNECTED", "RINGING", "HANGUP"), ringing_counts=True) == 2
    assert counting_calls(tuple(CONNECTED_STATES), ringing_counts=False) == len(CONNECTED_STATES)
    assert counting_calls(tuple(RINGING_STATES), ringing_counts=False) == 0


def test_teams_presence_from_calls_off() -> None:
    decision = run(ObservedUser(calls=("CONNECTED",)), with_switches(teams_presence_from_calls=False))
    assert decision.teams.presence is None
    assert decision.teams.rule == "teams_presence_from_calls is off: no bridge presence"


# -- debounce after the last call --------------------------------------------------------------


HELD = TeamsSession(BUSY_IN_A_CALL)


def ended(seconds_ago: float, session: TeamsSession | None = HELD) -> ObservedUser:
    return ObservedUser(last_call_ended_at=NOW - seconds_ago, bridge_session=session)


def test_debounce_holds_the_call_presence_briefly() -> None:
    decision = run(ended(2))
    assert decision.teams.presence == BUSY_IN_A_CALL
    assert decision.teams.rule == "last STARFACE call ended 2s ago: holding Busy/InACall for the 5s debounce"
    assert decision.recheck_at == NOW + 3


def test_debounce_ends() -> None:
    assert run(ended(5)).teams.presence is None
    assert run(ended(60)).recheck_at is None


def test_debounce_is_configurable() -> None:
    assert run(ended(2), with_switches(call_end_debounce_seconds=0)).teams.presence is None
    assert run(ended(20), with_switches(call_end_debounce_seconds=30)).teams.presence == BUSY_IN_A_CALL


def test_debounce_holds_nothing_without_an_active_session() -> None:
    """A missed call (never connected, so no session) must not set a presence afterwards."""
    assert run(ended(1, session=None)).teams.presence is None
    assert run(ended(1, session=TeamsSession(BUSY_IN_A_CALL, cleared_at=NOW - 1))).teams.presence is None


def test_new_call_during_debounce() -> None:
    user = dataclasses.replace(ended(1), calls=("CONNECTED",))
    decision = run(user)
    assert decision.teams.presence == BUSY_IN_A_CALL
    assert decision.recheck_at is None


# -- echo suppression --------------------------------------------------------------------------


def on_call(
    teams: TeamsPresence, own: TeamsPresence | None, session: TeamsPresence = BUSY_IN_A_CALL
) -> ObservedUser:
    return ObservedUser(
        teams=teams,
        teams_observed_at=NOW - 1,
        own_teams=own,
        calls=("CONNECTED",),
        bridge_session=TeamsSession(session),
    )


def test_own_session_echo_keeps_the_users_own_state() -> None:
    decision = run(on_call(BUSY_IN_A_CALL, own=AVAILABLE))
    assert decision.echo
    assert (decision.starface.dnd, decision.starface.text, decision.starface.row) == (
        False,
        "Verfügbar",
        "Available",
    )
    assert decision.starface.rule == (
        "Teams Busy/InACall is the echo of the bridge's session, which holds Busy/InACall; "
        "mapping the user's own Teams state Available/Available "
        '-> row "Available" (any activity): DND off, text "Verfügbar"'
    )
    assert decision.own_teams == AVAILABLE
    assert decision.teams.presence == BUSY_IN_A_CALL


def test_echo_keeps_a_meeting_that_the_session_hides() -> None:
    decision = run(on_call(BUSY_IN_A_CALL, own=MEETING))
    assert (decision.starface.dnd, decision.starface.text) == (False, "Beschäftigt - In einem Meeting")
    assert decision.own_teams == MEETING


def test_echo_with_unknown_own_state_leaves_starface_alone() -> None:
    decision = run(on_call(BUSY_IN_A_CALL, own=None))
    assert decision.echo
    assert (decision.starface.dnd, decision.starface.text) == (None, None)
    assert decision.starface.rule.endswith("the user's own state is unknown: STARFACE unchanged")
    assert decision.own_teams is None


def test_echo_comparison_ignores_letter_case() -> None:
    assert run(on_call(TeamsPresence("busy", "inACall"), own=AVAILABLE)).echo


def test_presenting_echo() -> None:
    mapping = with_switches(call_presence="DoNotDisturb/Presenting")
    decision = run(on_call(DND_PRESENTING, own=AVAILABLE, session=DND_PRESENTING), mapping)
    assert decision.echo
    assert (decision.starface.dnd, decision.starface.text) == (False, "Verfügbar")


def test_real_teams_call_without_a_bridge_session_maps() -> None:
    decision = run(ObservedUser(teams=BUSY_IN_A_CALL, own_teams=AVAILABLE))
    assert not decision.echo
    assert (decision.starface.dnd, decision.starface.text) == (True, "Im Gespräch")
    assert decision.own_teams == BUSY_IN_A_CALL


def test_real_teams_conference_call_during_a_starface_call_maps() -> None:
    decision = run(on_call(CONFERENCE, own=AVAILABLE))
    assert not decision.echo
    assert (decision.starface.dnd, decision.starface.text) == (True, "Im Gespräch")
    assert decision.starface.rule.startswith(
        "Teams Busy/InAConferenceCall is another session of the same rank as the bridge's Busy/InACall"
    )
    assert decision.own_teams == CONFERENCE


def test_dominating_dnd_is_not_an_echo() -> None:
    decision = run(on_call(DND, own=AVAILABLE))
    assert not decision.echo
    assert (decision.starface.dnd, decision.starface.text) == (True, "Nicht Stören")
    assert decision.starface.rule.startswith(
        "Teams DoNotDisturb/DoNotDisturb outranks the bridge's Busy/InACall "
        "(another session or a preferred presence)"
    )


def test_presence_below_the_session_is_the_users_own() -> None:
    decision = run(on_call(AVAILABLE, own=None))
    assert not decision.echo
    assert (decision.starface.dnd, decision.starface.text) == (False, "Verfügbar")
    assert "ranks below the bridge's Busy/InACall (Teams has not shown the bridge's session yet)" in (
        decision.starface.rule
    )
    assert decision.own_teams == AVAILABLE


def test_preferred_presence_of_unranked_availability_is_not_an_echo() -> None:
    decision = run(on_call(TeamsPresence("BeRightBack", "BeRightBack"), own=AVAILABLE))
    assert not decision.echo
    assert decision.starface.text == "Bin gleich zurück"
    assert "differs from the bridge's Busy/InACall" in decision.starface.rule


# -- after the bridge cleared its session ------------------------------------------------------


def cleared(
    teams: TeamsPresence, *, seconds_ago: float, seen_at: float | None, own: TeamsPresence | None = AVAILABLE
) -> ObservedUser:
    return ObservedUser(
        teams=teams,
        teams_observed_at=seen_at,
        own_teams=own,
        bridge_session=TeamsSession(BUSY_IN_A_CALL, cleared_at=NOW - seconds_ago),
    )


def test_late_echo_after_clearing_is_still_suppressed() -> None:
    decision = run(cleared(BUSY_IN_A_CALL, seconds_ago=60, seen_at=NOW))
    assert decision.echo
    assert (decision.starface.dnd, decision.starface.text) == (False, "Verfügbar")
    assert not decision.drop_bridge_session
    assert decision.recheck_at == NOW - 60 + 300
    assert "cleared moments ago and may still echo Busy/InACall" in decision.starface.rule


def test_echo_grace_ends() -> None:
    decision = run(cleared(BUSY_IN_A_CALL, seconds_ago=300, seen_at=NOW - 290))
    assert not decision.echo
    assert (decision.starface.dnd, decision.starface.text) == (True, "Im Gespräch")
    assert decision.drop_bridge_session
    assert decision.recheck_at is None
    assert "(the bridge cleared its Busy/InACall more than 300s ago)" in decision.starface.rule


def test_echo_grace_is_configurable() -> None:
    user = cleared(BUSY_IN_A_CALL, seconds_ago=30, seen_at=NOW)
    assert not run(user, with_switches(echo_grace_seconds=10)).echo
    assert run(user, with_switches(echo_grace_seconds=60)).echo


def test_presence_seen_after_the_clear_ends_the_grace_early() -> None:
    decision = run(cleared(AVAILABLE, seconds_ago=30, seen_at=NOW - 10))
    assert not decision.echo
    assert decision.drop_bridge_session
    assert decision.recheck_at is None


def test_presence_seen_before_the_clear_does_not_end_the_grace() -> None:
    """A short call: Teams never showed the session before the clear; its echo may still come."""
    decision = run(cleared(AVAILABLE, seconds_ago=30, seen_at=NOW - 40))
    assert not decision.echo
    assert not decision.drop_bridge_session
    late_echo = run(cleared(BUSY_IN_A_CALL, seconds_ago=30, seen_at=NOW))
    assert late_echo.echo
    assert late_echo.starface.dnd is False


def test_presence_without_arrival_time_does_not_end_the_grace() -> None:
    assert not run(cleared(AVAILABLE, seconds_ago=30, seen_at=None)).drop_bridge_session


def test_active_session_is_never_dropped() -> None:
    assert not run(on_call(AVAILABLE, own=None)).drop_bridge_session


# -- groups ------------------------------------------------------------------------------------

GROUPS = """
base = "de"
[groups."Vertrieb".switches]
call_presence = "DoNotDisturb/Presenting"
set_dnd = false
[groups."Vertrieb".rows]
"Busy/InAMeeting" = { dnd = true, text = "Im Meeting" }
"""


def test_group_override_applies_to_members() -> None:
    mapping = parse_mapping(GROUPS)
    member = ObservedUser(teams=MEETING, calls=("CONNECTED",), groups=frozenset({"Vertrieb", "7"}))
    decision = run(member, mapping)
    assert decision.group == "Vertrieb"
    assert (decision.starface.dnd, decision.starface.text) == (None, "Im Meeting")
    assert decision.teams.presence == DND_PRESENTING
    assert decision.rule.startswith('group "Vertrieb": STARFACE: ')

    outsider = run(dataclasses.replace(member, groups=frozenset({"7"})), mapping)
    assert outsider.group is None
    assert (outsider.starface.dnd, outsider.starface.text) == (False, "Beschäftigt - In einem Meeting")
    assert outsider.teams.presence == BUSY_IN_A_CALL


# -- properties --------------------------------------------------------------------------------

names = st.sampled_from((*AVAILABILITIES, *ACTIVITIES)) | st.text(max_size=12)
presences = st.builds(TeamsPresence, names, names) | st.sampled_from(
    [BUSY_IN_A_CALL, DND_PRESENTING, AVAILABLE, MEETING, DND, CONFERENCE]
)
times = st.floats(min_value=NOW - 4000, max_value=NOW + 10) | st.floats(min_value=NOW - 400, max_value=NOW)
sessions = st.builds(
    TeamsSession, st.sampled_from([BUSY_IN_A_CALL, DND_PRESENTING]), st.none() | times
) | st.builds(TeamsSession, presences, st.none() | times)
call_states = st.sampled_from(["CONNECTED", "RINGING", "PROCEEDING", "HANGUP", "PARKED"]) | st.text(
    max_size=8
)
any_users = st.builds(
    ObservedUser,
    teams=st.none() | presences,
    teams_observed_at=st.none() | times,
    own_teams=st.none() | presences,
    calls=st.lists(call_states, max_size=3).map(tuple),
    last_call_ended_at=st.none() | times,
    bridge_session=st.none() | sessions,
    groups=st.frozensets(st.sampled_from(["Vertrieb", "7", "x"]), max_size=2),
)


def _showing_the_session(user: ObservedUser) -> ObservedUser:
    """The observed presence is what the bridge's session holds: the interesting echo cases."""
    session = user.bridge_session
    return user if session is None else dataclasses.replace(user, teams=session.presence)


users = any_users | any_users.map(_showing_the_session)
mappings = st.sampled_from(
    [
        default_mapping("de"),
        default_mapping("en"),
        parse_mapping(GROUPS),
        with_switches(ringing_counts=True, call_presence="DoNotDisturb/Presenting"),
        with_switches(set_dnd=False, set_status_text=False, teams_presence_from_calls=False),
    ]
)


@given(users, mappings)
def test_decision_is_a_pure_function_of_its_inputs(user: ObservedUser, mapping: Mapping) -> None:
    first = decide(user, mapping, now=NOW)
    twin = dataclasses.replace(user)
    assert decide(twin, mapping, now=NOW) == first
    assert decide(user, mapping, now=NOW) == first


@given(users, mappings)
def test_decision_invariants(user: ObservedUser, mapping: Mapping) -> None:
    decision = decide(user, mapping, now=NOW)
    table = mapping.table_for(user.groups)
    switches = table.switches
    assert decision.teams.presence in (None, switches.call_presence)
    if not switches.teams_presence_from_calls:
        assert decision.teams.presence is None
    if not switches.set_dnd:
        assert decision.starface.dnd is None
    if not switches.set_status_text:
        assert decision.starface.text is None
    if decision.starface.row is not None:
        row = table.rows[decision.starface.row]
        assert decision.starface.dnd in (None, row.dnd)
        assert decision.starface.text in (None, row.text)
    if decision.recheck_at is not None:
        assert decision.recheck_at > NOW
    assert decision.rule
    if user.teams is None:
        assert decision.starface.row is None
        assert decision.own_teams == user.own_teams


@given(users, mappings)
def test_echo_maps_exactly_like_the_users_own_state(user: ObservedUser, mapping: Mapping) -> None:
    decision = decide(user, mapping, now=NOW)
    if not decision.echo:
        assert decision.own_teams == (user.teams if user.teams is not None else user.own_teams)
        return
    assert user.bridge_session is not None
    assert user.teams is not None
    assert user.teams.same_as(user.bridge_session.presence)
    assert decision.own_teams == user.own_teams
    without_echo = dataclasses.replace(user, teams=user.own_teams, bridge_session=None)
    if user.own_teams is None:
        assert (decision.starface.dnd, decision.starface.text) == (None, None)
    else:
        expected = decide(without_echo, mapping, now=NOW).starface
        assert (decision.starface.dnd, decision.starface.text) == (expected.dnd, expected.text)


@given(users, mappings)
def test_calls_drive_teams_independently_of_teams_presence(user: ObservedUser, mapping: Mapping) -> None:
    switches = mapping.table_for(user.groups).switches
    on_a_call = dataclasses.replace(user, calls=("CONNECTED",))
    expected = switches.call_presence if switches.teams_presence_from_calls else None
    assert decide(on_a_call, mapping, now=NOW).teams.presence == expected


# -- read-back: overwritten text, the user's own DND -------------------------------------------------


AWAY = TeamsPresence("Away", "Away")


def as_applied(**fields: object) -> ObservedUser:
    """Available in Teams; the bridge applied DND off and "Verfügbar"."""
    base = ObservedUser(teams=AVAILABLE, own_teams=AVAILABLE, applied_dnd=False, applied_text="Verfügbar")
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


def test_an_overwritten_text_is_what_starface_shows_and_the_mapping_still_wants_its_own() -> None:
    decision = run(as_applied(shown=StarfaceShown(False, "Verfügbar (UCC)", NOW - 1)))
    assert decision.starface.text == "Verfügbar"
    assert decision.shown_text == "Verfügbar (UCC)"
    assert decision.dnd_override is None


def test_without_a_read_back_starface_shows_what_the_bridge_applied() -> None:
    decision = run(as_applied())
    assert (decision.shown_dnd, decision.shown_text) == (False, "Verfügbar")


def test_respect_a_dnd_the_user_switched_until_teams_changes() -> None:
    switched = as_applied(shown=StarfaceShown(True, "Verfügbar", NOW - 1))
    decision = run(switched)
    assert decision.starface.dnd is None  # leave it
    assert decision.starface.text == "Verfügbar"
    assert decision.dnd_override == DndOverride(True, NOW - 1, AVAILABLE)
    assert "switched DND on themselves: respected" in decision.rule

    # Later passes (the bridge wrote the text meanwhile, so no fresh read): it still stands.
    standing = as_applied(dnd_override=decision.dnd_override)
    again = run(standing)
    assert again.starface.dnd is None
    assert again.dnd_override == decision.dnd_override
    assert again.shown_dnd is True

    # Her Teams state changes: the override ends and the mapping applies.
    ended = run(dataclasses.replace(standing, teams=AWAY, own_teams=AWAY))
    assert (ended.starface.dnd, ended.starface.text) == (False, "Abwesend")
    assert ended.dnd_override is None
    assert ended.dnd_override_ended
    assert ended.shown_dnd is True  # so the apply step writes DND off although it applied off before


def test_the_bridges_own_echo_does_not_end_the_users_dnd() -> None:
    override = DndOverride(True, NOW - 5, AVAILABLE)
    user = as_applied(
        teams=BUSY_IN_A_CALL,
        bridge_session=TeamsSession(BUSY_IN_A_CALL),
        calls=("CONNECTED",),
        dnd_override=override,
    )
    decision = run(user)
    assert decision.echo
    assert decision.starface.dnd is None
    assert decision.dnd_override == override


def test_a_user_who_switches_back_ends_the_override() -> None:
    override = DndOverride(True, NOW - 5, AVAILABLE)
    decision = run(as_applied(dnd_override=override, shown=StarfaceShown(False, "Verfügbar", NOW - 1)))
    assert decision.dnd_override is None
    assert decision.starface.dnd is False
    assert not decision.dnd_override_ended
    assert decision.shown_dnd is False


def test_enforce_writes_the_mappings_dnd_again() -> None:
    user = as_applied(shown=StarfaceShown(True, "Verfügbar", NOW - 1))
    decision = decide(user, default_mapping("de"), now=NOW, dnd_policy=DND_ENFORCE)
    assert decision.starface.dnd is False
    assert decision.shown_dnd is True
    assert decision.dnd_override is None
    assert "enforcing the mapping" in decision.rule


def test_an_unknown_dnd_in_the_read_back_is_no_user_change() -> None:
    decision = run(as_applied(shown=StarfaceShown(None, "Verfügbar", NOW - 1)))
    assert decision.dnd_override is None
    assert decision.starface.dnd is False
    assert decision.shown_dnd is False
