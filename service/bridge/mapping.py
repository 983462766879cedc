"""The mapping from Teams presence to STARFACE DND and status text, plus the general switches.

A mapping is read from a TOML file (``docs/mapping.md`` is the format reference) or taken from a
built-in table (``service/mappings/default.<language>.toml``, German by default, English
selectable).  Loading validates the whole file before failing and names every problem by its TOML
key path, so an administrator fixes the file in one round.

Row lookup for an observed ``availability``/``activity`` pair, first hit wins:

1. the exact row ``"Availability/Activity"``;
2. the availability row ``"Availability"`` (which therefore means ``Availability/*``);
3. the row named by ``switches.default_row``.

Graph's values are PascalCase, but one revision of its documentation printed them lower-cased,
so observed values are matched case-insensitively.  A value the bridge does not know (say, a
state Microsoft adds later) never raises: it skips steps 1–2 and takes the default row.

Group overrides: ``[groups."<STARFACE group>"]`` replaces some switches and rows for the members of
that group.  A user in several listed groups gets the *first* matching group in file order and no
other, the way firewall rules are read; overrides are never blended, so what a user gets can be
read off one section of the file.

STARFACE offers no external API to show a user as "on the phone": its telephony state and chat
presence icon are computed by the PBX.  The only levers are DND and the chat status text, which
is why a row has exactly those two fields.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.resources
import json
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from service.graph.presence import (
    ACTIVITIES,
    ACTIVITY_BY_FOLD,
    AVAILABILITIES,
    AVAILABILITY_BY_FOLD,
    BUSY_IN_A_CALL,
    CALL_PRESENCES,
    TeamsPresence,
)

LANGUAGES: Final = ("de", "en")

# Row fields and the TOML sections: one place, so validation and did-you-mean agree.
_ROW_FIELDS: Final = ("dnd", "text")
_TOP_KEYS: Final = ("base", "switches", "rows", "groups")
_GROUP_KEYS: Final = ("switches", "rows")
_DEBOUNCE_MAX: Final = 300.0
_ECHO_GRACE_MAX: Final = 3600.0
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class MappingError(Exception):
    """A mapping that cannot be used; ``problems`` names every bad key, value or missing row."""

    def __init__(self, problems: list[str], source: str = "mapping") -> None:
        self.problems = list(problems)
        self.source = source
        if len(self.problems) == 1:
            message = f"{source}: {self.problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            message = f"{source}: {len(self.problems)} problems:\n{lines}"
        super().__init__(message)


@dataclass(frozen=True)
class Row:
    """What one Teams state means for STARFACE."""

    dnd: bool
    text: str


@dataclass(frozen=True)
class Switches:
    """The general switches; the defaults equal the shipped default tables."""

    teams_presence_from_calls: bool = True
    call_presence: TeamsPresence = BUSY_IN_A_CALL
    ringing_counts: bool = False
    call_end_debounce_seconds: float = 5.0
    echo_grace_seconds: float = 300.0
    set_dnd: bool = True
    set_status_text: bool = True
    default_row: str = "PresenceUnknown"


SWITCH_HELP: Final = {
    "teams_presence_from_calls": "set Teams presence from STARFACE calls",
    "call_presence": "Teams presence shown during a STARFACE call",
    "ringing_counts": "a ringing or dialling call already counts as a call",
    "call_end_debounce_seconds": "keep the call presence this long after the last call ends",
    "echo_grace_seconds": "after clearing, treat the bridge's old presence as its echo this long",
    "set_dnd": "set STARFACE DND from Teams presence",
    "set_status_text": "set STARFACE chat status text from Teams presence",
    "default_row": "row for availability/activity values no row matches",
}

# How a row was found; shown by ``mapping check`` and in decision explanations.
EXACT: Final = "exact"
BY_AVAILABILITY: Final = "availability"
BY_DEFAULT: Final = "default"


@dataclass(frozen=True)
class RowMatch:
    key: str
    row: Row
    how: str

    def describe(self) -> str:
        if self.how == EXACT:
            return f'row "{self.key}"'
        if self.how == BY_AVAILABILITY:
            return f'row "{self.key}" (any activity)'
        return f'default row "{self.key}"'


@dataclass(frozen=True)
class Table:
    """Rows plus switches: everything needed to map one user."""

    rows: MappingProxyType[str, Row]
    switches: Switches

    def __post_init__(self) -> None:
        if self.switches.default_row not in self.rows:
            raise MappingError([f'switches.default_row names no row: "{self.switches.default_row}"'])

    def lookup(self, availability: str, activity: str) -> RowMatch:
        """Find the row for an observed pair; never raises (see the module docstring)."""
        known_availability = AVAILABILITY_BY_FOLD.get(availability.casefold())
        if known_availability is not None:
            known_activity = ACTIVITY_BY_FOLD.get(activity.casefold())
            if known_activity is not None:
                key = f"{known_availability}/{known_activity}"
                if key in self.rows:
                    return RowMatch(key, self.rows[key], EXACT)
            if known_availability in self.rows:
                return RowMatch(known_availability, self.rows[known_availability], BY_AVAILABILITY)
        key = self.switches.default_row
        return RowMatch(key, self.rows[key], BY_DEFAULT)


@dataclass(frozen=True)
class GroupOverride:
    """One ``[groups."<name>"]`` section: what it changes, and the resulting table."""

    name: str
    rows: MappingProxyType[str, Row]
    switches: tuple[str, ...]
    table: Table


@dataclass(frozen=True)
class Mapping:
    """A validated mapping: the base table and the group overrides in file order."""

    base: Table
    groups: tuple[GroupOverride, ...] = ()
    source: str = "built-in"

    def override_for(self, groups: Iterable[str]) -> GroupOverride | None:
        """The first override (file order) naming one of ``groups`` (STARFACE group ids or names)."""
        member_of = set(groups)
        for override in self.groups:
            if override.name in member_of:
                return override
        return None

    def table_for(self, groups: Iterable[str] = ()) -> Table:
        override = self.override_for(groups)
        return self.base if override is None else override.table


# -- loading ---------------------------------------------------------------------------------


@functools.cache
def default_mapping(language: str = "de") -> Mapping:
    """The built-in table shipped as ``service/mappings/default.<language>.toml``."""
    if language not in LANGUAGES:
        raise MappingError([f"unknown language {language!r}; choose one of {', '.join(LANGUAGES)}"])
    resource = importlib.resources.files("service.bridge.mappings").joinpath(f"default.{language}.toml")
    return parse_mapping(resource.read_text(encoding="utf-8"), source=f"built-in ({language})")


def load_mapping(path: str | Path | None, language: str = "de") -> Mapping:
    """Read and validate a mapping file; ``None`` gives the built-in table in ``language``.

    Raises ``MappingError`` for a missing or unreadable file and for every problem in it.
    """
    if path is None:
        return default_mapping(language)
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise MappingError(["file not found"], source) from None
    except OSError as exc:
        raise MappingError([f"cannot read the file: {exc.strerror or exc}"], source) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MappingError(["the file is not UTF-8 text"], source) from None
    return parse_mapping(text, source=source)


def parse_mapping(text: str, source: str = "mapping") -> Mapping:
    """Validate TOML text into a ``Mapping``; raises ``MappingError`` listing every problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MappingError([f"invalid TOML: {exc}"], source) from None
    return mapping_from_data(data, source)


def mapping_from_data(data: dict[str, Any], source: str = "mapping") -> Mapping:
    """Validate already-parsed TOML data; raises ``MappingError`` listing every problem."""
    problems: list[str] = []
    mapping = _build(data, problems, source)
    if problems or mapping is None:
        raise MappingError(problems, source)
    return mapping


def _build(data: dict[str, Any], problems: list[str], source: str) -> Mapping | None:
    _reject_unknown(data, _TOP_KEYS, "", problems)

    base: Table | None = None
    base_valid = True
    if "base" in data:
        if data["base"] in LANGUAGES:
            base = default_mapping(data["base"]).base
        else:
            problems.append(f"base must be {' or '.join(json.dumps(n) for n in LANGUAGES)}")
            base_valid = False

    own_switches = _parse_switches(data.get("switches", {}), "switches", problems)
    written: set[str] = set()
    own_rows = _parse_rows(data.get("rows", {}), "rows", problems, written)
    rows = {**(base.rows if base else {}), **own_rows}
    switches = dataclasses.replace(base.switches if base else Switches(), **own_switches)

    if base is None and base_valid:
        # A row with a bad field is reported as such, not a second time as missing.
        for availability in AVAILABILITIES:
            if availability not in written:
                problems.append(
                    f"missing required row rows.{_quote(availability)} (every availability needs a row; "
                    'add it, or start from a built-in table with base = "de" or "en")'
                )
    explicit_default = "default_row" in own_switches
    if (explicit_default or base is not None) and switches.default_row not in rows:
        problems.append(_no_such_row("switches.default_row", switches.default_row, rows))

    groups = _parse_groups(data.get("groups", {}), rows, switches, problems)
    if problems:
        return None
    return Mapping(Table(MappingProxyType(rows), switches), groups, source)


def _parse_groups(
    value: Any, base_rows: dict[str, Row], base_switches: Switches, problems: list[str]
) -> tuple[GroupOverride, ...]:
    if not isinstance(value, dict):
        problems.append('groups must be a table of [groups."<STARFACE group>"] sections')
        return ()
    overrides: list[GroupOverride] = []
    for name, body in value.items():
        path = f"groups.{_quote(name)}"
        if not name.strip():
            problems.append(f"{path}: a group name must not be empty")
        if not isinstance(body, dict):
            problems.append(f"{path} must be a table with optional switches and rows")
            continue
        _reject_unknown(body, _GROUP_KEYS, path, problems)
        own_switches = _parse_switches(body.get("switches", {}), f"{path}.switches", problems)
        own_rows = _parse_rows(body.get("rows", {}), f"{path}.rows", problems)
        rows = {**base_rows, **own_rows}
        switches = dataclasses.replace(base_switches, **own_switches)
        if "default_row" in own_switches and switches.default_row not in rows:
            problems.append(_no_such_row(f"{path}.switches.default_row", switches.default_row, rows))
            continue
        if switches.default_row not in rows:
            continue  # the base table's own default_row problem is already reported
        table = Table(MappingProxyType(rows), switches)
        overrides.append(GroupOverride(name, MappingProxyType(own_rows), tuple(own_switches), table))
    return tuple(overrides)


def _parse_rows(
    value: Any, path: str, problems: list[str], written: set[str] | None = None
) -> dict[str, Row]:
    """The valid rows; ``written`` collects every valid key, even of a row with bad fields."""
    if not isinstance(value, dict):
        problems.append(f'{path} must be a table of "Availability/Activity" = {{ dnd = ..., text = ... }}')
        return {}
    rows: dict[str, Row] = {}
    written_as: dict[str, str] = {}
    for key, body in value.items():
        row_path = f"{path}.{_quote(key)}"
        canonical = _row_key(key, row_path, problems)
        row = _parse_row(body, row_path, problems)
        if canonical is None:
            continue
        if canonical in written_as:
            problems.append(f"{row_path} duplicates {path}.{_quote(written_as[canonical])}")
            continue
        written_as[canonical] = key
        if written is not None:
            written.add(canonical)
        if row is not None:
            rows[canonical] = row
    return rows


def _row_key(key: str, path: str, problems: list[str]) -> str | None:
    """``"Busy"``, ``"Busy/*"`` or ``"Busy/InACall"`` in Graph's spelling, or ``None`` if invalid."""
    parts = key.split("/")
    if len(parts) > 2 or not all(parts):
        problems.append(f'unknown key {path}: a row key is "Availability" or "Availability/Activity"')
        return None
    availability = parts[0]
    activity = parts[1] if len(parts) == 2 else "*"
    valid = True
    if availability not in AVAILABILITIES:
        problems.append(
            f"unknown key {path}: unknown availability {availability!r}"
            f"{_did_you_mean(availability, AVAILABILITIES)}"
        )
        valid = False
    if activity != "*" and activity not in ACTIVITIES:
        problems.append(
            f"unknown key {path}: unknown activity {activity!r}{_did_you_mean(activity, ACTIVITIES)}"
        )
        valid = False
    if not valid:
        return None
    return availability if activity == "*" else f"{availability}/{activity}"


def _parse_row(value: Any, path: str, problems: list[str]) -> Row | None:
    if not isinstance(value, dict):
        problems.append(f'{path} must be a table like {{ dnd = true, text = "..." }}')
        return None
    _reject_unknown(value, _ROW_FIELDS, path, problems)
    before = len(problems)
    dnd = value.get("dnd")
    if "dnd" not in value:
        problems.append(f"{path}.dnd is missing")
    elif not isinstance(dnd, bool):
        problems.append(f"{path}.dnd must be true or false")
    text = value.get("text")
    if "text" not in value:
        problems.append(f"{path}.text is missing")
    elif not isinstance(text, str):
        problems.append(f"{path}.text must be a string")
    elif any(ch.isspace() and ch != " " for ch in text) or not text.isprintable():
        # A STARFACE status text is one line in every client; tabs or newlines would be mangled.
        problems.append(f"{path}.text must be a single line of printable text")
    if len(problems) != before or not isinstance(dnd, bool) or not isinstance(text, str):
        return None
    return Row(dnd, text)


def _parse_switches(value: Any, path: str, problems: list[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        problems.append(f"{path} must be a table")
        return {}
    names = tuple(field.name for field in dataclasses.fields(Switches))
    _reject_unknown(value, names, path, problems)
    parsed: dict[str, Any] = {}
    for name, raw in value.items():
        if name not in names:
            continue
        key_path = f"{path}.{name}"
        if name == "call_presence":
            choice = next((p for p in CALL_PRESENCES if isinstance(raw, str) and str(p) == raw), None)
            if choice is None:
                allowed = " or ".join(f'"{p}"' for p in CALL_PRESENCES)
                problems.append(
                    f"{key_path} must be {allowed} (the only call states Teams' setPresence accepts)"
                )
            else:
                parsed[name] = choice
        elif name in ("call_end_debounce_seconds", "echo_grace_seconds"):
            upper = _DEBOUNCE_MAX if name == "call_end_debounce_seconds" else _ECHO_GRACE_MAX
            if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 <= raw <= upper:
                problems.append(f"{key_path} must be a number of seconds from 0 to {upper:g}")
            else:
                parsed[name] = float(raw)
        elif name == "default_row":
            if not isinstance(raw, str):
                problems.append(f'{key_path} must be a row key such as "PresenceUnknown"')
            else:
                canonical = _row_key(raw, key_path, [])
                parsed[name] = raw if canonical is None else canonical
        elif isinstance(raw, bool):
            parsed[name] = raw
        else:
            problems.append(f"{key_path} must be true or false")
    return parsed


def _reject_unknown(table: dict[str, Any], allowed: tuple[str, ...], path: str, problems: list[str]) -> None:
    for key in table:
        if key in allowed:
            continue
        near = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        hint = f" (did you mean {_join(path, near[0])}?)" if near else ""
        problems.append(f"unknown key {_join(path, key)}{hint}")


def _no_such_row(path: str, name: str, rows: dict[str, Row]) -> str:
    near = difflib.get_close_matches(name, list(rows), n=1, cutoff=0.6)
    hint = f" (did you mean {_quote(near[0])}?)" if near else ""
    return f"{path} names no row: {_quote(name)}{hint}"


def _did_you_mean(word: str, choices: tuple[str, ...]) -> str:
    by_fold = {choice.casefold(): choice for choice in choices}
    near = [by_fold[word.casefold()]] if word.casefold() in by_fold else []
    near = near or difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {near[0]!r}?)" if near else ""


def _quote(key: str) -> str:
    return json.dumps(key, ensure_ascii=False)


def _join(path: str, key: str) -> str:
    shown = key if _BARE_KEY.fullmatch(key) else _quote(key)
    return f"{path}.{shown}" if path else shown


# -- presentation ----------------------------------------------------------------------------


def _row_order(key: str) -> tuple[int, int, str]:
    availability, _, activity = key.partition("/")
    position = AVAILABILITIES.index(availability) if availability in AVAILABILITIES else len(AVAILABILITIES)
    activity_position = ACTIVITIES.index(activity) + 1 if activity in ACTIVITIES else 0
    return position, activity_position, key


def _switch_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _row_lines(rows: MappingProxyType[str, Row], indent: str) -> list[str]:
    header = "Teams state"
    width = max([len(header), *(len(key) for key in rows)])
    lines = [f"{indent}{header:<{width}}  DND  Status text"]
    for key in sorted(rows, key=_row_order):
        row = rows[key]
        lines.append(f"{indent}{key:<{width}}  {'yes' if row.dnd else 'no ':<3}  {row.text}")
    return lines


def format_table(mapping: Mapping) -> str:
    """The effective mapping as ``mapping check`` prints it: switches, rows, group overrides."""
    switches = mapping.base.switches
    names = [field.name for field in dataclasses.fields(Switches)]
    width = max(len(name) for name in names)
    lines = [f"Mapping: {mapping.source}", "", "Switches"]
    for name in names:
        value = _switch_value(getattr(switches, name))
        lines.append(f"  {name:<{width}}  {value:<16} {SWITCH_HELP[name]}")
    lines += [
        "",
        "Rows (lookup: exact Availability/Activity, then Availability, then default_row)",
        *_row_lines(mapping.base.rows, "  "),
        f'  any other state -> default row "{switches.default_row}"',
        "",
        "STARFACE cannot be told that a user is on the phone; the bridge sets only DND and the text.",
    ]
    if mapping.groups:
        lines += ["", "Group overrides (a user in several groups gets the first one listed)"]
        for number, override in enumerate(mapping.groups, start=1):
            lines.append(f"  {number}. group {_quote(override.name)}")
            if not override.switches and not override.rows:
                lines.append("     no changes: members keep the base table")
            for name in override.switches:
                value = _switch_value(getattr(override.table.switches, name))
                lines.append(f"     switches.{name} = {value}")
            if override.rows:
                lines += _row_lines(override.rows, "     ")
    return "\n".join(lines)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return _quote(str(value))


def _toml_rows(rows: MappingProxyType[str, Row] | dict[str, Row], header: str) -> list[str]:
    lines = [f"[{header}]"]
    for key in sorted(rows, key=_row_order):
        row = rows[key]
        lines.append(f"{_quote(key)} = {{ dnd = {_toml_value(row.dnd)}, text = {_quote(row.text)} }}")
    return lines


def to_toml(mapping: Mapping) -> str:
    """The mapping as a self-contained TOML file (every switch and row written out), such that
    ``parse_mapping(to_toml(m))`` maps every user as ``m`` does; ``mapping export`` prints it."""
    switches = mapping.base.switches
    lines = [f"# presence-bridge mapping, from {mapping.source}", "", "[switches]"]
    for spec in dataclasses.fields(Switches):
        lines.append(f"{spec.name} = {_toml_value(getattr(switches, spec.name))}")
    lines += ["", *_toml_rows(mapping.base.rows, "rows")]
    for override in mapping.groups:
        section = f"groups.{_quote(override.name)}"
        if override.switches:
            lines += ["", f"[{section}.switches]"]
            values = override.table.switches
            lines += [f"{name} = {_toml_value(getattr(values, name))}" for name in override.switches]
        if override.rows:
            lines += ["", *_toml_rows(override.rows, f"{section}.rows")]
        if not override.switches and not override.rows:
            lines += ["", f"[{section}]"]
    return "\n".join(lines) + "\n"
