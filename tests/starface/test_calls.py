from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from service.starface.calls import CallEvent, CallFormatError, event_time

FULL = {
    "id": "5b0c3a9e-7f1e-4d55-9a43-0e6f0c2d9a11",
    "state": "CONNECTED",
    "timestamp": 1763800000123,
    "callerNumber": "+4971112345678",
    "callerName": "Erika Mustermann",
    "calledNumber": "0001",
    "calledName": "Anna Alpha",
    "groupID": "",
}


def test_full_call_state_round_trips_through_stream_fields() -> None:
    event = CallEvent.from_call_state("0001", FULL, received_at=1763800000.5)
    assert event.login == "0001"
    assert event.call_id == FULL["id"]
    assert event.state == "CONNECTED"
    assert event.time == pytest.approx(1763800000.123)
    assert event.received_at == 1763800000.5
    assert (event.caller_number, event.caller_name) == ("+4971112345678", "Erika Mustermann")
    assert (event.called_number, event.called_name) == ("0001", "Anna Alpha")
    fields = event.to_fields()
    assert set(fields) == {"call"}
    assert CallEvent.from_fields(fields) == event


def test_sparse_first_event_keeps_empty_details_and_empty_state() -> None:
    event = CallEvent.from_call_state("0002", {"id": "c1", "state": "", "timestamp": 5})
    assert event.state == ""
    assert event.caller_number == event.caller_name == event.called_number == event.called_name == ""
    assert event.time == 5.0
    assert CallEvent.from_fields(event.to_fields()) == event


def test_state_is_normalised_to_upper_case() -> None:
    assert CallEvent.from_call_state("1", {"id": "c", "state": " ringing "}).state == "RINGING"


@pytest.mark.parametrize(
    "struct",
    [None, "text", [], {}, {"id": ""}, {"id": 7}, {"id": "c", "state": 3}],
)
def test_struct_without_what_a_call_event_needs_is_refused(struct: Any) -> None:
    with pytest.raises(CallFormatError):
        CallEvent.from_call_state("0001", struct)


@pytest.mark.parametrize("fields", [{}, {"call": "not json"}, {"call": '{"login": "1"}'}])
def test_unreadable_stream_entry_is_refused(fields: dict[str, str]) -> None:
    with pytest.raises(CallFormatError):
        CallEvent.from_fields(fields)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1763800000123, 1763800000.123),
        (1763800000, 1763800000.0),
        ("1763800000123", 1763800000.123),
        (1763800000.25, 1763800000.25),
        (dt.datetime(2025, 11, 22, 8, 0, 0), dt.datetime(2025, 11, 22, 8, tzinfo=dt.UTC).timestamp()),
        ("2025-11-22T08:00:00+01:00", dt.datetime(2025, 11, 22, 7, tzinfo=dt.UTC).timestamp()),
        ("yesterday", None),
        (None, None),
        (True, None),
        ({"a": 1}, None),
    ],
)
def test_event_time_accepts_the_forms_a_pbx_may_send(value: Any, expected: float | None) -> None:
    if expected is None:
        assert event_time(value) is None
    else:
        assert event_time(value) == pytest.approx(expected)


@pytest.mark.parametrize(
    "value",
    [
        10**400,
        -(10**400),
        "9" * 5000,
        "9" * 25,
        float("inf"),
        float("nan"),
        10**20,
        "+" + "1" * 30,
        "٣٣٣",
        "9999-12-31T23:59:59-23:00",
    ],
)
def test_event_time_of_a_huge_or_odd_value_is_none_never_an_overflow(value: Any) -> None:
    assert event_time(value) is None


def test_a_nil_state_reads_as_empty() -> None:
    assert CallEvent.from_call_state("0001", {"id": "c", "state": None}).state == ""
