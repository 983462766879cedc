"""The mapping: built-in tables, TOML loading, group overrides, validation, ``mapping check``."""

from __future__ import annotations

import argparse
import dataclasses
import re
import tomllib
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.bridge.mapping import (
    BY_AVAILABILITY,
    BY_DEFAULT,
    EXACT,
    Mapping,
    MappingError,
    Row,
    Switches,
    default_mapping,
    format_table,
    load_mapping,
    mapping_from_data,
    parse_mapping,
)
from service.cli.mapping import add_check_arguments, run_check
from service.graph.presence import ACTIVITIES, AVAILABILITIES, CALL_PRESENCES, DND_PRESENTING, TeamsPresence

WriteMapping = Callable[[str], Path]

# DESIGN.md's default table, row by row (normative): availability, activity, DND, German, English.
DESIGN_TABLE = [
    ("Available", "Available", False, "Verfügbar", "Available"),
    ("Available", "OutOfOffice", False, "Verfügbar - Ausser Haus", "Available - Out of office"),
    ("Busy", "Busy", False, "Beschäftigt", "Busy"),
    ("Busy", "InACall", True, "Im Gespräch", "In a call"),
    ("Busy", "InAConferenceCall", True, "Im Gespräch", "In a call"),
    ("Busy", "InAMeeting", False, "Beschäftigt - In einem Meeting", "Busy - In a meeting"),
    ("Busy", "OutOfOffice", False, "Beschäftigt - Ausser Haus", "Busy - Out of office"),
    ("DoNotDisturb", "DoNotDisturb", True, "Nicht Stören", "Do not disturb"),
    ("DoNotDisturb", "UrgentInterruptionsOnly", True, "Nicht Stören", "Do not disturb"),
    (
        "DoNotDisturb",
        "Presenting",
        True,
        "Nicht Stören - In einer Präsentation",
        "Do not disturb - Presenting",
    ),
    ("Away", "Away", False, "Abwesend", "Away"),
    ("Away", "OutOfOffice", False, "Abwesend - Ausser Haus", "Away - Out of office"),
    ("BeRightBack", "BeRightBack", False, "Bin gleich zurück", "Be right back"),
    ("Offline", "Offline", False, "Offline", "Offline"),
    ("Offline", "OffWork", False, "Offline", "Offline"),
    ("Offline", "OutOfOffice", False, "Offline - Ausser Haus", "Offline - Out of office"),
    ("Offline", "PresenceUnknown", False, "Offline - Unbekannt", "Offline - Unknown"),
    ("PresenceUnknown", "PresenceUnknown", False, "Unbekannt", "Unknown"),
]

MINIMAL_ROWS = "\n".join(f'"{name}" = {{ dnd = false, text = "{name}" }}' for name in AVAILABILITIES)


def problems_of(text: str) -> list[str]:
    with pytest.raises(MappingError) as caught:
        parse_mapping(text)
    return caught.value.problems


def only_problem(text: str) -> str:
    problems = problems_of(text)
    assert len(problems) == 1, problems
    return problems[0]


# -- built-in tables ---------------------------------------------------------------------------


@pytest.mark.parametrize(("availability", "activity", "dnd", "text", "_english"), DESIGN_TABLE)
def test_german_default_rows(
    german: Mapping, availability: str, activity: str, dnd: bool, text: str, _english: str
) -> None:
    assert german.base.lookup(availability, activity).row == Row(dnd, text)


@pytest.mark.parametrize(("availability", "activity", "dnd", "_german", "text"), DESIGN_TABLE)
def test_english_default_rows(
    english: Mapping, availability: str, activity: str, dnd: bool, _german: str, text: str
) -> None:
    assert english.base.lookup(availability, activity).row == Row(dnd, text)


@pytest.mark.parametrize("language", ["de", "en"])
def test_every_known_availability_has_its_own_row(language: str) -> None:
    table = default_mapping(language).base
    for availability in AVAILABILITIES:
        for activity in ACTIVITIES:
            match = table.lookup(availability, activity)
            assert match.how in (EXACT, BY_AVAILABILITY), (availability, activity, match)
            assert match.key.partition("/")[0] == availability


def test_both_languages_have_the_same_rows_and_switches(german: Mapping, english: Mapping) -> None:
    assert list(german.base.rows) == list(english.base.rows)
    assert german.base.switches == english.base.switches
    assert [german.base.rows[k].dnd for k in german.base.rows] == [
        english.base.rows[k].dnd for k in english.base.rows
    ]


@pytest.mark.parametrize("language", ["de", "en"])
def test_shipped_switches_equal_the_dataclass_defaults(language: str) -> None:
    """Files without [switches] get ``Switches()``; it must say what the shipped tables say."""
    assert default_mapping(language).base.switches == Switches()


@pytest.mark.parametrize("language", ["de", "en"])
def test_shipped_files_are_complete_without_a_base(language: str) -> None:
    text = resources.files("service.bridge.mappings").joinpath(f"default.{language}.toml").read_text("utf-8")
    data = tomllib.loads(text)
    assert "base" not in data
    assert "groups" not in data
    assert parse_mapping(text).base == default_mapping(language).base


@pytest.mark.parametrize("language", ["de", "en"])
def test_shipped_files_say_starface_cannot_show_on_the_phone(language: str) -> None:
    text = resources.files("service.bridge.mappings").joinpath(f"default.{language}.toml").read_text("utf-8")
    assert 'STARFACE has no external API to show a user as "on the phone"' in text


def test_load_without_a_file_gives_the_built_in_table(german: Mapping, english: Mapping) -> None:
    assert load_mapping(None) is german
    assert load_mapping(None, language="en") is english
    assert german.source == "built-in (de)"


def test_unknown_language_is_a_mapping_error() -> None:
    with pytest.raises(MappingError) as caught:
        load_mapping(None, language="fr")
    assert caught.value.problems == ["unknown language 'fr'; choose one of de, en"]


# -- lookup ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("availability", "activity", "key", "how"),
    [
        ("Busy", "InACall", "Busy/InACall", EXACT),
        ("busy", "inacall", "Busy/InACall", EXACT),
        ("BUSY", "InAMeeting", "Busy/InAMeeting", EXACT),
        ("Busy", "Focusing", "Busy", BY_AVAILABILITY),
        ("Busy", "SomethingNew", "Busy", BY_AVAILABILITY),
        ("DoNotDisturb", "", "DoNotDisturb", BY_AVAILABILITY),
        ("Bussy", "InACall", "PresenceUnknown", BY_DEFAULT),
        ("OutOfOffice", "OutOfOffice", "PresenceUnknown", BY_DEFAULT),
        ("", "", "PresenceUnknown", BY_DEFAULT),
        ("Busy/InACall", "", "PresenceUnknown", BY_DEFAULT),
    ],
)
def test_lookup_order(german: Mapping, availability: str, activity: str, key: str, how: str) -> None:
    match = german.base.lookup(availability, activity)
    assert (match.key, match.how) == (key, how)
    assert match.row == german.base.rows[key]


def test_default_row_is_configurable(write_mapping: WriteMapping) -> None:
    mapping = load_mapping(write_mapping('base = "de"\n[switches]\ndefault_row = "Busy"\n'))
    match = mapping.base.lookup("Quantum", "Entangled")
    assert (match.key, match.how, match.row.text) == ("Busy", BY_DEFAULT, "Beschäftigt")


@given(st.text(), st.text())
def test_arbitrary_strings_never_raise(availability: str, activity: str) -> None:
    table = default_mapping("de").base
    match = table.lookup(availability, activity)
    assert table.rows[match.key] == match.row
    if availability.casefold() not in {a.casefold() for a in AVAILABILITIES}:
        assert match.how == BY_DEFAULT


def test_teams_presence_helpers() -> None:
    presence = TeamsPresence.parse("busy/inacall")
    assert presence == TeamsPresence("busy", "inacall")
    assert presence.canonical() == TeamsPresence("Busy", "InACall")
    assert presence.same_as(TeamsPresence("Busy", "InACall"))
    assert not presence.same_as(TeamsPresence("Busy", "InAConferenceCall"))
    assert TeamsPresence("Weird", "x").canonical() == TeamsPresence("Weird", "x")
    assert str(DND_PRESENTING) == "DoNotDisturb/Presenting"


# -- loading files -----------------------------------------------------------------------------


def test_base_file_overrides_rows_and_switches(write_mapping: WriteMapping, german: Mapping) -> None:
    path = write_mapping(
        """
base = "de"
[switches]
call_presence = "DoNotDisturb/Presenting"
ringing_counts = true
call_end_debounce_seconds = 2.5
echo_grace_seconds = 60
set_dnd = false
[rows]
"Busy/InAMeeting" = { dnd = true, text = "Im Meeting" }
"Busy/Focusing" = { dnd = true, text = "Konzentriert" }
"""
    )
    mapping = load_mapping(path)
    assert mapping.source == str(path)
    assert mapping.base.switches == Switches(
        call_presence=DND_PRESENTING,
        ringing_counts=True,
        call_end_debounce_seconds=2.5,
        echo_grace_seconds=60.0,
        set_dnd=False,
    )
    assert mapping.base.lookup("Busy", "InAMeeting").row == Row(True, "Im Meeting")
    assert mapping.base.lookup("Busy", "Focusing").row == Row(True, "Konzentriert")
    assert mapping.base.lookup("Busy", "InACall").row == german.base.rows["Busy/InACall"]
    assert mapping.groups == ()


def test_english_base(write_mapping: WriteMapping) -> None:
    mapping = load_mapping(write_mapping('base = "en"\n'))
    assert mapping.base.lookup("Busy", "InACall").row == Row(True, "In a call")


def test_complete_file_without_base(write_mapping: WriteMapping) -> None:
    mapping = load_mapping(write_mapping(f"[rows]\n{MINIMAL_ROWS}\n"))
    assert mapping.base.switches == Switches()
    assert set(mapping.base.rows) == set(AVAILABILITIES)
    # Without a Busy/InACall row, the availability row answers.
    assert mapping.base.lookup("Busy", "InACall").row == Row(False, "Busy")


def test_star_activity_is_the_availability_row(write_mapping: WriteMapping) -> None:
    mapping = load_mapping(
        write_mapping('base = "de"\n[rows]\n"DoNotDisturb/*" = { dnd = false, text = "Ruhe" }\n')
    )
    assert "DoNotDisturb/*" not in mapping.base.rows
    assert mapping.base.lookup("DoNotDisturb", "UrgentInterruptionsOnly").row == Row(False, "Ruhe")
    assert (
        mapping.base.lookup("DoNotDisturb", "Presenting").row.text == "Nicht Stören - In einer Präsentation"
    )


def test_default_row_may_be_written_with_star(write_mapping: WriteMapping) -> None:
    mapping = load_mapping(write_mapping('base = "de"\n[switches]\ndefault_row = "Away/*"\n'))
    assert mapping.base.switches.default_row == "Away"


def test_empty_text_is_allowed(write_mapping: WriteMapping) -> None:
    mapping = load_mapping(write_mapping('base = "de"\n[rows]\n"Away" = { dnd = false, text = "" }\n'))
    assert mapping.base.rows["Away"] == Row(False, "")


# -- group overrides ---------------------------------------------------------------------------

GROUPS = """
base = "de"
[groups."Vertrieb".switches]
call_presence = "DoNotDisturb/Presenting"
[groups."Vertrieb".rows]
"Busy/InAMeeting" = { dnd = true, text = "Im Meeting" }
[groups."Leitung"]
[groups."42".switches]
set_status_text = false
[groups."42".rows]
"Away" = { dnd = true, text = "Weg" }
"""


def test_group_override_replaces_only_what_it_lists(german: Mapping) -> None:
    mapping = parse_mapping(GROUPS)
    table = mapping.table_for({"Vertrieb"})
    assert table.switches == Switches(call_presence=DND_PRESENTING)
    assert table.lookup("Busy", "InAMeeting").row == Row(True, "Im Meeting")
    assert table.lookup("Away", "Away").row == german.base.rows["Away"]
    override = mapping.override_for(["Vertrieb"])
    assert override is not None
    assert override.switches == ("call_presence",)
    assert dict(override.rows) == {"Busy/InAMeeting": Row(True, "Im Meeting")}


def test_user_outside_every_group_gets_the_base_table() -> None:
    mapping = parse_mapping(GROUPS)
    assert mapping.override_for({"Support", "7"}) is None
    assert mapping.table_for({"Support"}) is mapping.base
    assert mapping.table_for() is mapping.base


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        ({"42", "Vertrieb"}, "Vertrieb"),
        (["42", "Leitung", "Vertrieb"], "Vertrieb"),
        ({"42", "Leitung"}, "Leitung"),
        ({"42"}, "42"),
    ],
)
def test_first_group_in_file_order_wins(groups: set[str] | list[str], expected: str) -> None:
    override = parse_mapping(GROUPS).override_for(groups)
    assert override is not None
    assert override.name == expected


def test_empty_group_shields_its_members_from_later_groups() -> None:
    mapping = parse_mapping(GROUPS)
    table = mapping.table_for({"Leitung", "42"})
    assert table == mapping.base
    assert table.lookup("Away", "Away").row == Row(False, "Abwesend")


def test_group_may_override_the_default_row() -> None:
    mapping = parse_mapping('base = "de"\n[groups.x.switches]\ndefault_row = "Offline"\n')
    assert mapping.table_for({"x"}).lookup("?", "?").key == "Offline"
    assert mapping.base.lookup("?", "?").key == "PresenceUnknown"


# -- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('base = "de"\nbsae = "de"', "unknown key bsae (did you mean base?)"),
        ('base = "de"\nfoo = 1', "unknown key foo"),
        ('base = "fr"\n[rows]\nAvailable = { dnd = false, text = "x" }', 'base must be "de" or "en"'),
        ('base = "de"\nswitches = 1', "switches must be a table"),
        (
            'base = "de"\n[switches]\nset_dnt = true',
            "unknown key switches.set_dnt (did you mean switches.set_dnd?)",
        ),
        ('base = "de"\n[switches]\nset_dnd = "yes"', "switches.set_dnd must be true or false"),
        ('base = "de"\n[switches]\nset_status_text = 1', "switches.set_status_text must be true or false"),
        ('base = "de"\n[switches]\nringing_counts = "no"', "switches.ringing_counts must be true or false"),
        (
            'base = "de"\n[switches]\nteams_presence_from_calls = 0',
            "switches.teams_presence_from_calls must be true or false",
        ),
        (
            'base = "de"\n[switches]\ncall_presence = "Busy/Busy"',
            'switches.call_presence must be "Busy/InACall" or "DoNotDisturb/Presenting" '
            "(the only call states Teams' setPresence accepts)",
        ),
        (
            'base = "de"\n[switches]\ncall_presence = true',
            'switches.call_presence must be "Busy/InACall" or "DoNotDisturb/Presenting" '
            "(the only call states Teams' setPresence accepts)",
        ),
        (
            'base = "de"\n[switches]\ncall_end_debounce_seconds = -1',
            "switches.call_end_debounce_seconds must be a number of seconds from 0 to 300",
        ),
        (
            'base = "de"\n[switches]\ncall_end_debounce_seconds = true',
            "switches.call_end_debounce_seconds must be a number of seconds from 0 to 300",
        ),
        (
            'base = "de"\n[switches]\ncall_end_debounce_seconds = "5"',
            "switches.call_end_debounce_seconds must be a number of seconds from 0 to 300",
        ),
        (
            'base = "de"\n[switches]\necho_grace_seconds = 3601',
            "switches.echo_grace_seconds must be a number of seconds from 0 to 3600",
        ),
        (
            'base = "de"\n[switches]\ndefault_row = 3',
            'switches.default_row must be a row key such as "PresenceUnknown"',
        ),
        (
            'base = "de"\n[switches]\ndefault_row = "Busy/InAMeting"',
            'switches.default_row names no row: "Busy/InAMeting" (did you mean "Busy/InAMeeting"?)',
        ),
        (
            'base = "de"\n[switches]\ndefault_row = "Busy/Focusing"',
            'switches.default_row names no row: "Busy/Focusing"',
        ),
        (
            'base = "de"\nrows = 5',
            'rows must be a table of "Availability/Activity" = { dnd = ..., text = ... }',
        ),
        (
            'base = "de"\n[rows]\n"Bussy" = { dnd = true, text = "x" }',
            "unknown key rows.\"Bussy\": unknown availability 'Bussy' (did you mean 'Busy'?)",
        ),
        (
            'base = "de"\n[rows]\n"busy" = { dnd = true, text = "x" }',
            "unknown key rows.\"busy\": unknown availability 'busy' (did you mean 'Busy'?)",
        ),
        (
            'base = "de"\n[rows]\n"Xyzzy" = { dnd = true, text = "x" }',
            "unknown key rows.\"Xyzzy\": unknown availability 'Xyzzy'",
        ),
        (
            'base = "de"\n[rows]\n"Busy/InACal" = { dnd = true, text = "x" }',
            "unknown key rows.\"Busy/InACal\": unknown activity 'InACal' (did you mean 'InACall'?)",
        ),
        (
            'base = "de"\n[rows]\n"Busy/InACall/x" = { dnd = true, text = "x" }',
            'unknown key rows."Busy/InACall/x": a row key is "Availability" or "Availability/Activity"',
        ),
        (
            'base = "de"\n[rows]\n"/InACall" = { dnd = true, text = "x" }',
            'unknown key rows."/InACall": a row key is "Availability" or "Availability/Activity"',
        ),
        (
            'base = "de"\n[rows]\n"Busy/" = { dnd = true, text = "x" }',
            'unknown key rows."Busy/": a row key is "Availability" or "Availability/Activity"',
        ),
        (
            'base = "de"\n[rows]\n"Busy" = "yes"',
            'rows."Busy" must be a table like { dnd = true, text = "..." }',
        ),
        ('base = "de"\n[rows]\n"Busy/InACall" = { text = "x" }', 'rows."Busy/InACall".dnd is missing'),
        (
            'base = "de"\n[rows]\n"Busy/InACall" = { dnd = "yes", text = "x" }',
            'rows."Busy/InACall".dnd must be true or false',
        ),
        ('base = "de"\n[rows]\n"Busy/InACall" = { dnd = true }', 'rows."Busy/InACall".text is missing'),
        (
            'base = "de"\n[rows]\n"Busy/InACall" = { dnd = true, text = 1 }',
            'rows."Busy/InACall".text must be a string',
        ),
        (
            'base = "de"\n[rows]\n"Busy/InACall" = { dnd = true, text = "a\\nb" }',
            'rows."Busy/InACall".text must be a single line of printable text',
        ),
        (
            'base = "de"\n[rows]\n"Busy/InACall" = { dnd = true, text = "a\\tb" }',
            'rows."Busy/InACall".text must be a single line of printable text',
        ),
        (
            'base = "de"\n[rows]\n"Busy" = { dnd = true, txt = "x", text = "y" }',
            'unknown key rows."Busy".txt (did you mean rows."Busy".text?)',
        ),
        (
            'base = "de"\n[rows]\n"DoNotDisturb" = { dnd = true, text = "a" }\n'
            '"DoNotDisturb/*" = { dnd = true, text = "b" }',
            'rows."DoNotDisturb/*" duplicates rows."DoNotDisturb"',
        ),
        ('base = "de"\ngroups = 1', 'groups must be a table of [groups."<STARFACE group>"] sections'),
        ('base = "de"\n[groups]\nx = 1', 'groups."x" must be a table with optional switches and rows'),
        ('base = "de"\n[groups.""]', 'groups."": a group name must not be empty'),
        ('base = "de"\n[groups.x]\nrow = 1', 'unknown key groups."x".row (did you mean groups."x".rows?)'),
        (
            'base = "de"\n[groups.x.switches]\nset_dnd = 1',
            'groups."x".switches.set_dnd must be true or false',
        ),
        (
            'base = "de"\n[groups.x.rows]\n"Bussy/InACall" = { dnd = true, text = "x" }',
            'unknown key groups."x".rows."Bussy/InACall": '
            "unknown availability 'Bussy' (did you mean 'Busy'?)",
        ),
        (
            'base = "de"\n[groups.x.rows]\n"Busy" = { dnd = 1, text = "x" }',
            'groups."x".rows."Busy".dnd must be true or false',
        ),
        (
            'base = "de"\n[groups.x.switches]\ndefault_row = "Nope"',
            'groups."x".switches.default_row names no row: "Nope"',
        ),
    ],
)
def test_each_validation_problem_is_named(text: str, message: str) -> None:
    assert only_problem(text) == message


def test_missing_required_rows_are_each_named() -> None:
    problems = problems_of('[rows]\n"Available" = { dnd = false, text = "x" }\n')
    assert problems == [
        f'missing required row rows."{name}" (every availability needs a row; add it, '
        'or start from a built-in table with base = "de" or "en")'
        for name in AVAILABILITIES
        if name != "Available"
    ]


def test_row_with_a_bad_field_is_not_also_reported_missing() -> None:
    text = f"[rows]\n{MINIMAL_ROWS}\n".replace('"Away" = { dnd = false', '"Away" = { dnd = "no"')
    assert problems_of(text) == ['rows."Away".dnd must be true or false']


def test_every_problem_is_collected_at_once() -> None:
    problems = problems_of(
        """
base = "de"
colour = "red"
[switches]
set_dnd = "yes"
[rows]
"Bussy" = { dnd = true, text = "x" }
"Busy/InACall" = { dnd = 1, text = 2 }
[groups.x.switches]
ringing_counts = "maybe"
"""
    )
    assert problems == [
        "unknown key colour",
        "switches.set_dnd must be true or false",
        "unknown key rows.\"Bussy\": unknown availability 'Bussy' (did you mean 'Busy'?)",
        'rows."Busy/InACall".dnd must be true or false',
        'rows."Busy/InACall".text must be a string',
        'groups."x".switches.ringing_counts must be true or false',
    ]


def test_invalid_toml_is_one_problem() -> None:
    problem = only_problem("[rows\n")
    assert problem.startswith("invalid TOML: ")


def test_error_message_formats() -> None:
    single = MappingError(["file not found"], "/etc/m.toml")
    assert str(single) == "/etc/m.toml: file not found"
    multi = MappingError(["a", "b"], "/etc/m.toml")
    assert str(multi) == "/etc/m.toml: 2 problems:\n  - a\n  - b"
    assert multi.problems == ["a", "b"]
    assert multi.source == "/etc/m.toml"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MappingError) as caught:
        load_mapping(tmp_path / "nope.toml")
    assert str(caught.value) == f"{tmp_path / 'nope.toml'}: file not found"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(MappingError) as caught:
        load_mapping(tmp_path)
    assert caught.value.problems == ["cannot read the file: Is a directory"]


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('base = "de"\n# Grüße\n'.encode("latin-1"))
    with pytest.raises(MappingError) as caught:
        load_mapping(path)
    assert caught.value.problems == ["the file is not UTF-8 text"]


scalars = st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
row_keys = st.sampled_from(AVAILABILITIES) | st.builds(
    "{}/{}".format, st.sampled_from((*AVAILABILITIES, "Bussy")), st.sampled_from((*ACTIVITIES, "*", "x"))
)
row_values = st.fixed_dictionaries(
    {}, optional={"dnd": st.booleans() | st.integers(), "text": st.text(max_size=8) | st.integers()}
)
rows_tables = st.dictionaries(row_keys, row_values | json_values, max_size=6)
switch_tables = st.dictionaries(
    st.sampled_from([*(f.name for f in dataclasses.fields(Switches)), "bogus"]),
    scalars | st.sampled_from(["Busy/InACall", "DoNotDisturb/Presenting", "Away", "Busy/InACall"]),
    max_size=4,
)
sections = {
    "base": st.sampled_from(["de", "en", "fr"]) | json_values,
    "rows": rows_tables | json_values,
    "switches": switch_tables | json_values,
    "groups": st.dictionaries(
        st.text(max_size=6),
        st.fixed_dictionaries({}, optional={"rows": rows_tables, "switches": switch_tables}) | json_values,
        max_size=3,
    ),
    "extra": json_values,
}


@given(st.fixed_dictionaries({}, optional=sections))
def test_arbitrary_data_gives_a_mapping_or_a_mapping_error(data: dict[str, Any]) -> None:
    mapping: Mapping | None = None
    problems: list[str] = []
    try:
        mapping = mapping_from_data(data)
    except MappingError as exc:
        problems = exc.problems
    if mapping is None:
        assert problems
        assert all(isinstance(p, str) and p for p in problems)
        return
    for table in (mapping.base, *(group.table for group in mapping.groups)):
        assert table.switches.default_row in table.rows
        assert all(isinstance(row.dnd, bool) and isinstance(row.text, str) for row in table.rows.values())
        assert table.switches.call_presence in CALL_PRESENCES


@given(st.text(max_size=200))
def test_arbitrary_text_gives_a_mapping_or_a_mapping_error(text: str) -> None:
    problems = ["parsed"]
    try:
        parse_mapping(text)
    except MappingError as exc:
        problems = exc.problems
    assert problems


# -- mapping check -----------------------------------------------------------------------------


def test_format_table_lists_switches_rows_and_groups() -> None:
    text = format_table(parse_mapping(GROUPS, source="/etc/bridge/mapping.toml"))
    lines = text.splitlines()
    assert lines[0] == "Mapping: /etc/bridge/mapping.toml"
    assert any(line.split()[:2] == ["call_presence", "Busy/InACall"] for line in lines)
    assert any(line.split()[:2] == ["ringing_counts", "false"] for line in lines)
    assert any(line.split()[:2] == ["call_end_debounce_seconds", "5"] for line in lines)
    assert any(line.split() == ["Busy/InACall", "yes", "Im", "Gespräch"] for line in lines)
    assert any(
        line.split() == ["Available/OutOfOffice", "no", "Verfügbar", "-", "Ausser", "Haus"] for line in lines
    )
    assert '  any other state -> default row "PresenceUnknown"' in lines
    assert (
        "STARFACE cannot be told that a user is on the phone; the bridge sets only DND and the text." in lines
    )
    groups_at = lines.index("Group overrides (a user in several groups gets the first one listed)")
    assert lines[groups_at + 1 :] == [
        '  1. group "Vertrieb"',
        "     switches.call_presence = DoNotDisturb/Presenting",
        "     Teams state      DND  Status text",
        "     Busy/InAMeeting  yes  Im Meeting",
        '  2. group "Leitung"',
        "     no changes: members keep the base table",
        '  3. group "42"',
        "     switches.set_status_text = false",
        "     Teams state  DND  Status text",
        "     Away         yes  Weg",
    ]


def test_format_table_orders_rows_by_availability(german: Mapping) -> None:
    lines = format_table(german).splitlines()
    start = lines.index("  Teams state              DND  Status text") + 1
    keys = [line.split()[0] for line in lines[start : start + len(german.base.rows)]]
    assert keys[:3] == ["Available", "Available/OutOfOffice", "AvailableIdle"]
    assert keys[-1] == "PresenceUnknown"
    assert sorted(keys) == sorted(german.base.rows)


def _check(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="presence-bridge mapping check")
    add_check_arguments(parser)
    return run_check(parser.parse_args(argv))


def test_check_valid_file(write_mapping: WriteMapping, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_mapping(GROUPS)
    assert _check([str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out == format_table(load_mapping(path)) + "\n"


def test_check_without_file_shows_the_built_in_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert _check(["--language", "en"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Mapping: built-in (en)\n")
    assert "Do not disturb - Presenting" in out


def test_check_invalid_file(write_mapping: WriteMapping, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_mapping('base = "de"\n[rows]\n"Bussy" = { dnd = "x", text = "y" }\n')
    assert _check([str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"{path}: 2 problems:\n"
        "  - unknown key rows.\"Bussy\": unknown availability 'Bussy' (did you mean 'Busy'?)\n"
        '  - rows."Bussy".dnd must be true or false\n'
    )
    assert "Traceback" not in err


def test_check_missing_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _check([str(tmp_path / "absent.toml")]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"{tmp_path / 'absent.toml'}: file not found\n"


def test_every_toml_example_in_the_admin_doc_is_valid() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "mapping.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", doc, flags=re.DOTALL)
    assert len(blocks) >= 3
    for block in blocks:
        text = block if block.lstrip().startswith("base") else f'base = "de"\n{block}'
        parse_mapping(text)


def test_admin_doc_error_example_is_what_check_prints(tmp_path: Path) -> None:
    doc = (Path(__file__).parents[2] / "docs" / "mapping.md").read_text(encoding="utf-8")
    example = re.search(r"```\n(/etc/presence-bridge/mapping.toml: .*?)```", doc, flags=re.DOTALL)
    assert example is not None
    rows = MINIMAL_ROWS.replace('"BeRightBack" = { dnd = false, text = "BeRightBack" }', "")
    text = f'[switches]\nset_dnd = "yes"\n[rows]\n{rows}\n"Busy/InACal" = {{ dnd = true, text = "x" }}\n'
    with pytest.raises(MappingError) as caught:
        parse_mapping(text, source="/etc/presence-bridge/mapping.toml")
    assert str(caught.value) + "\n" == example.group(1)
