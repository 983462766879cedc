"""The mapping page: the switches and one row per Teams state, as the form STARFACE admins know.

Save stores a new version (``service/bridge/mapping_store.py``); workers switch to it within a
second and reconcile every user again.  Group overrides and anything the form does not show are
kept from the current version, and can be edited as TOML in the same page.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from service.bridge.mapping import (
    SWITCH_HELP,
    Mapping,
    MappingError,
    Switches,
    mapping_from_data,
    parse_mapping,
    to_toml,
)
from service.bridge.mapping_store import MappingStore, MappingVersion, UnknownVersion, diff
from service.console.context import console_of, form_of, text_field
from service.graph.presence import ACTIVITIES, AVAILABILITIES, CALL_PRESENCES
from service.ops.explain import preview_changes

_FLOATS = ("call_end_debounce_seconds", "echo_grace_seconds")


@dataclass(frozen=True)
class SwitchField:
    name: str
    kind: str
    value: Any
    help: str
    problem: str


@dataclass(frozen=True)
class RowField:
    key: str
    dnd: bool
    text: str
    problem: str


def _problem_for(problems: list[str], *paths: str) -> str:
    return "; ".join(p for p in problems if any(path in p for path in paths))


def _view(mapping_data: dict[str, Any], problems: list[str]) -> tuple[list[SwitchField], list[RowField]]:
    defaults = Switches()
    given = mapping_data.get("switches", {})
    switches = []
    for spec in dataclasses.fields(Switches):
        value = given.get(spec.name, getattr(defaults, spec.name))
        kind = "bool" if isinstance(getattr(defaults, spec.name), bool) else spec.name
        kind = "float" if spec.name in _FLOATS else kind
        switches.append(
            SwitchField(
                spec.name,
                kind,
                str(value) if kind not in ("bool",) else value,
                SWITCH_HELP[spec.name],
                _problem_for(problems, f"switches.{spec.name}"),
            )
        )
    rows = [
        RowField(
            key,
            bool(body.get("dnd")) if isinstance(body, dict) else False,
            str(body.get("text", "")) if isinstance(body, dict) else "",
            _problem_for(problems, f'rows."{key}"', f"rows.{json.dumps(key)}"),
        )
        for key, body in mapping_data.get("rows", {}).items()
    ]
    return switches, rows


def _data_of(mapping: Mapping) -> dict[str, Any]:
    data: dict[str, Any] = tomllib.loads(to_toml(mapping))
    return data


def _data_from_form(form: FormData, current: dict[str, Any]) -> dict[str, Any]:
    switches: dict[str, Any] = {}
    for spec in dataclasses.fields(Switches):
        name = spec.name
        if isinstance(getattr(Switches(), name), bool):
            switches[name] = form.get(f"switch.{name}") == "on"
            continue
        raw = text_field(form, f"switch.{name}", 100).strip()
        if name in _FLOATS:
            try:
                switches[name] = float(raw)
            except ValueError:
                switches[name] = raw  # validation names the field
        else:
            switches[name] = raw
    rows: dict[str, Any] = {}
    for key in form:
        if key.startswith("row.") and key.endswith(".text"):
            row_key = key[4:-5]
            if form.get(f"row.{row_key}.remove") == "on":
                continue
            rows[row_key] = {
                "dnd": form.get(f"row.{row_key}.dnd") == "on",
                "text": text_field(form, key, 200),
            }
    new_key = text_field(form, "new.key", 100).strip()
    if new_key:
        rows[new_key] = {"dnd": form.get("new.dnd") == "on", "text": text_field(form, "new.text", 200)}
    data: dict[str, Any] = {"switches": switches, "rows": rows}
    if current.get("groups"):
        data["groups"] = current["groups"]
    return data


async def _current(request: Request) -> tuple[MappingVersion | None, Mapping | None]:
    version = await MappingStore(console_of(request).redis).current()
    if version is None:
        return None, None
    try:
        return version, version.mapping()
    except MappingError:
        return version, None


async def _render(
    request: Request,
    current: tuple[MappingVersion | None, Mapping | None],
    data: dict[str, Any],
    *,
    problems: list[str] | None = None,
    toml_text: str | None = None,
    preview: list[Any] | None = None,
    status: int = 200,
) -> Response:
    console = console_of(request)
    version, mapping = current
    problems = problems or []
    switches, rows = _view(data, problems)
    saved = request.query_params.get("saved", "")
    return console.render(
        request,
        "mapping.html",
        status=status,
        switches=switches,
        rows=rows,
        problems=problems,
        version=version,
        toml_text=toml_text if toml_text is not None else (version.toml if version else ""),
        preview=preview,
        saved=saved if saved.isdigit() else "",
        call_presences=[str(p) for p in CALL_PRESENCES],
        row_keys=[*AVAILABILITIES, *(f"{a}/{b}" for a in AVAILABILITIES for b in ACTIVITIES)],
        has_groups=bool(mapping and mapping.groups),
    )


async def show(request: Request) -> Response:
    current = await _current(request)
    if current[1] is None:
        return await _render(request, current, {}, problems=["no mapping is stored yet: start a worker once"])
    return await _render(request, current, _data_of(current[1]))


def _parse_form(
    form: FormData, current: dict[str, Any]
) -> tuple[dict[str, Any], str, Mapping | None, list[str]]:
    """The form as mapping data and TOML text, the mapping, or every problem with it."""
    if form.get("mode") == "toml":
        text = text_field(form, "toml", 200_000)
        try:
            mapping = parse_mapping(text, source="console")
        except MappingError as exc:
            return current, text, None, exc.problems
        return _data_of(mapping), text, mapping, []
    data = _data_from_form(form, current)
    try:
        mapping = mapping_from_data(data, source="console")
    except MappingError as exc:
        return data, "", None, exc.problems
    return data, to_toml(mapping), mapping, []


async def preview(request: Request) -> Response:
    console = console_of(request)
    current = await _current(request)
    data, text, mapping, problems = _parse_form(form_of(request), _data_of(current[1]) if current[1] else {})
    if mapping is None:
        return await _render(request, current, data, problems=problems, toml_text=text or None, status=400)
    changes = [row for row in await preview_changes(console.redis, mapping) if row.changes]
    return await _render(request, current, data, toml_text=text, preview=changes)


async def save(request: Request) -> Response:
    console = console_of(request)
    before, current = await _current(request)
    form = form_of(request)
    data, text, mapping, problems = _parse_form(form, _data_of(current) if current else {})
    if mapping is None:
        return await _render(
            request, (before, current), data, problems=problems, toml_text=text or None, status=400
        )
    session = request.state.session
    store = MappingStore(console.redis)
    version = await store.save(text, who=session.who, note=text_field(form, "note", 300))
    changed = "\n".join(diff(before, version)) if before else ""
    await console.audit.write(
        session.who,
        "mapping saved",
        f"version {version.number}",
        before=f"version {before.number}" if before else "none",
        after=changed[:8000],
    )
    return RedirectResponse(f"/mapping?saved={version.number}", status_code=303)


async def history(request: Request) -> Response:
    console = console_of(request)
    versions = await MappingStore(console.redis).history(200)
    return console.render(request, "mapping_history.html", versions=versions)


async def version(request: Request) -> Response:
    console = console_of(request)
    store = MappingStore(console.redis)
    number = int(request.path_params["number"])
    try:
        shown = await store.get(number)
    except UnknownVersion as exc:
        return console.render(request, "error.html", status=404, detail=str(exc))
    try:
        previous: MappingVersion | None = await store.get(number - 1)
    except UnknownVersion:
        previous = None
    lines = diff(previous, shown) if previous else []
    return console.render(request, "mapping_version.html", shown=shown, lines=lines, previous=previous)


async def restore(request: Request) -> Response:
    console = console_of(request)
    store = MappingStore(console.redis)
    session = request.state.session
    number = int(request.path_params["number"])
    before = await store.current()
    try:
        restored = await store.roll_back(number, who=session.who)
    except UnknownVersion as exc:
        return console.render(request, "error.html", status=404, detail=str(exc))
    except MappingError as exc:
        return console.render(request, "error.html", status=400, detail=str(exc))
    await console.audit.write(
        session.who,
        "mapping rolled back",
        f"version {restored.number}",
        before=f"version {before.number}" if before else "none",
        after=f"text of version {number}",
    )
    return RedirectResponse(f"/mapping?saved={restored.number}", status_code=303)


async def export(request: Request) -> Response:
    version, _ = await _current(request)
    body = version.toml if version else ""
    return Response(
        body,
        media_type="application/toml; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="mapping.toml"'},
    )
