"""The typed STARFACE call event that flows from the UCI callback to the workers.

``receiveCallState`` carries a struct whose details may be empty in the first events of a call
(docs/protocols.md, "UCI"); the event keeps them as received and the reconciler decides.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis.asyncio as aioredis

from service.core.partitions import Partitions


class CallFormatError(Exception):
    """A call-state struct or a stored call event without the fields a call event needs."""


@dataclass(frozen=True)
class CallEvent:
    login: str
    call_id: str
    state: str
    time: float | None
    received_at: float
    caller_number: str = ""
    caller_name: str = ""
    called_number: str = ""
    called_name: str = ""
    group_id: str = ""
    source: str = "uci"

    @classmethod
    def from_call_state(
        cls, login: str, struct: Any, *, received_at: float | None = None, source: str = "uci"
    ) -> CallEvent:
        """Build from the struct of ``ucp.{ns}.events.call.receiveCallState``."""
        if not isinstance(struct, dict):
            raise CallFormatError("call state is not a struct")
        call_id = struct.get("id")
        if not isinstance(call_id, str) or not call_id:
            raise CallFormatError("call state without id")
        state = struct.get("state") or ""  # Java servers send an absent value as <nil/>
        if not isinstance(state, str):
            raise CallFormatError("call state with a non-text state")
        return cls(
            login=login,
            call_id=call_id,
            state=state.strip().upper(),
            time=event_time(struct.get("timestamp")),
            received_at=time.time() if received_at is None else received_at,
            caller_number=_text(struct.get("callerNumber")),
            caller_name=_text(struct.get("callerName")),
            called_number=_text(struct.get("calledNumber")),
            called_name=_text(struct.get("calledName")),
            group_id=_text(struct.get("groupID")),
            source=source,
        )

    def to_fields(self) -> dict[str, str]:
        return {"call": json.dumps(asdict(self), separators=(",", ":"))}

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> CallEvent:
        try:
            raw = json.loads(fields["call"])
            return cls(**raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise CallFormatError(f"unreadable stream entry: {exc}") from None


# Epoch values above this are milliseconds: seconds would put them past the year 5000.
_MILLISECONDS_FROM = 100_000_000_000
# Beyond the year 9999 in either unit a timestamp is noise; refusing it early keeps float() and
# int() of a hostile digit string from overflowing (Python refuses int() of over 4,300 digits).
_MAX_EPOCH_SECONDS = 253_402_300_799
_MAX_DIGITS = 20


def event_time(value: Any) -> float | None:
    """Epoch seconds from the PBX's ``timestamp``: ms or s as a number/digits, or an ISO date.

    The unit is not documented, so both are accepted; anything else gives ``None`` rather than a
    refused event, because the receive time still orders the events.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        stripped = value.strip()
        if len(stripped) > 64:
            return None
        if not stripped.lstrip("-").isascii() or not stripped.lstrip("-").isdigit():
            return _iso_time(stripped)
        if len(stripped.lstrip("-")) > _MAX_DIGITS:
            return None
        value = int(stripped)
    if isinstance(value, int) and abs(value) > _MAX_EPOCH_SECONDS * 1000:
        return None
    if isinstance(value, int | float):
        number = float(value)
        if not math.isfinite(number):
            return None
        seconds = number / 1000 if abs(number) >= _MILLISECONDS_FROM else number
        return seconds if abs(seconds) <= _MAX_EPOCH_SECONDS else None
    if isinstance(value, dt.datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
        return _timestamp(aware)
    return None


def _timestamp(aware: dt.datetime) -> float | None:
    try:
        seconds = aware.timestamp()
    except (OverflowError, OSError, ValueError):
        return None
    return seconds if abs(seconds) <= _MAX_EPOCH_SECONDS else None


def _iso_time(text: str) -> float | None:
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    aware = parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)
    return _timestamp(aware)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return str(value)


async def append_call(redis: aioredis.Redis, partitions: Partitions, event: CallEvent, maxlen: int) -> str:
    """Queue ``event`` on its login's call stream, whether a callback or a recovery read brought it."""
    fields: Any = event.to_fields()
    entry_id = await redis.xadd(partitions.call_stream(event.login), fields, maxlen=maxlen, approximate=True)
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
