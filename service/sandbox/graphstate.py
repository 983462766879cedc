"""The Graph sandbox's shared vocabulary: Graph's error shape, its duration and date formats, user ids.

The state itself lives beside it: presence sessions and their aggregation in ``presence_book``,
subscriptions and rate limits in ``subscription_book``; ``graph.py`` puts them on the wire.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Iterable
from typing import Any

GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_DURATION = re.compile(
    r"^P(?:(?P<days>\d+)D)?(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)


class GraphError(Exception):
    """A Graph error answer: HTTP status plus the ``error.code`` and ``error.message`` of its body."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self, now: dt.datetime, client_request_id: str | None) -> dict[str, Any]:
        inner: dict[str, Any] = {
            "date": now.strftime("%Y-%m-%dT%H:%M:%S"),
            "request-id": str(uuid.uuid4()),
        }
        if client_request_id:
            inner["client-request-id"] = client_request_id
        return {"error": {"code": self.code, "message": self.message, "innerError": inner}}


def bad_request(message: str, code: str = "BadRequest") -> GraphError:
    return GraphError(400, code, message)


def parse_duration(value: str) -> float:
    """ISO-8601 duration (``PT5M``, ``PT1H``, ``P1D``) to seconds."""
    match = _DURATION.match(value.strip().upper()) if isinstance(value, str) else None
    if match is None or value.strip().upper() in ("P", "PT"):
        raise bad_request(f"The value '{value}' is not a valid duration.")
    parts = {k: float(v) for k, v in match.groupdict().items() if v is not None}
    return (
        parts.get("days", 0) * 86400
        + parts.get("hours", 0) * 3600
        + parts.get("minutes", 0) * 60
        + parts.get("seconds", 0)
    )


def parse_datetime(value: Any) -> float:
    """Graph's ``DateTimeOffset`` (seven fractional digits allowed) to epoch seconds."""
    if not isinstance(value, str) or not value:
        raise bad_request("Invalid DateTimeOffset value.")
    text = value.strip()
    match = re.match(r"^(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$", text)
    if match is None:
        raise bad_request(f"The value '{value}' is not a valid DateTimeOffset.")
    base, fraction, zone = match.groups()
    try:
        parsed = dt.datetime.fromisoformat(base + (zone or "Z").replace("Z", "+00:00"))
    except ValueError:
        raise bad_request(f"The value '{value}' is not a valid DateTimeOffset.") from None
    return parsed.timestamp() + (float(f"0.{fraction}") if fraction else 0.0)


def format_datetime(epoch: float) -> str:
    """Graph's wire format: UTC with seven fractional digits and ``Z``."""
    moment = dt.datetime.fromtimestamp(epoch, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}0Z"


def normalize_ids(values: Iterable[Any]) -> list[str]:
    result: list[str] = []
    for value in values:
        if not isinstance(value, str) or not GUID.match(value):
            raise bad_request(f"Invalid user id '{value}'.")
        result.append(value.lower())
    return result
