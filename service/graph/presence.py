"""Graph presence vocabulary and the typed presence change that flows from the webhook to the workers."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any, Final

# Graph presence value lists (docs/protocols.md, "Presence values"), plus the two values newer Graph texts
# mention (``Focusing``, ``AvailableInactive``), so that admins may write rows for them.
AVAILABILITIES: Final = (
    "Available",
    "AvailableIdle",
    "Busy",
    "BusyIdle",
    "DoNotDisturb",
    "Away",
    "BeRightBack",
    "Offline",
    "PresenceUnknown",
)
ACTIVITIES: Final = (
    "Available",
    "AvailableInactive",
    "Away",
    "BeRightBack",
    "Busy",
    "DoNotDisturb",
    "Focusing",
    "InACall",
    "InAConferenceCall",
    "Inactive",
    "InAMeeting",
    "Offline",
    "OffWork",
    "OutOfOffice",
    "PresenceUnknown",
    "Presenting",
    "UrgentInterruptionsOnly",
)
AVAILABILITY_BY_FOLD: Final = {name.casefold(): name for name in AVAILABILITIES}
ACTIVITY_BY_FOLD: Final = {name.casefold(): name for name in ACTIVITIES}


@dataclass(frozen=True)
class TeamsPresence:
    """A Graph availability/activity pair, as observed or as the bridge's session sets it."""

    availability: str
    activity: str

    @classmethod
    def parse(cls, text: str) -> TeamsPresence:
        availability, _, activity = text.partition("/")
        return cls(availability, activity)

    def canonical(self) -> TeamsPresence:
        """Known values in Graph's spelling; unknown values unchanged."""
        return TeamsPresence(
            AVAILABILITY_BY_FOLD.get(self.availability.casefold(), self.availability),
            ACTIVITY_BY_FOLD.get(self.activity.casefold(), self.activity),
        )

    def same_as(self, other: TeamsPresence) -> bool:
        """Equal up to letter case (Graph's documented values are case-insensitive)."""
        return (self.availability.casefold(), self.activity.casefold()) == (
            other.availability.casefold(),
            other.activity.casefold(),
        )

    def __str__(self) -> str:
        return f"{self.availability}/{self.activity}"


BUSY_IN_A_CALL: Final = TeamsPresence("Busy", "InACall")
DND_PRESENTING: Final = TeamsPresence("DoNotDisturb", "Presenting")
# setPresence accepts more pairs, but only these two say "on a call" (docs/protocols.md, "setPresence").
CALL_PRESENCES: Final = (BUSY_IN_A_CALL, DND_PRESENTING)


class PresenceFormatError(Exception):
    """Decrypted or stored presence data without the fields a presence change needs."""


@dataclass(frozen=True)
class PresenceChange:
    user_id: str
    availability: str
    activity: str
    sequence: str | None = None
    status_message: str | None = None
    subscription_id: str = ""
    tenant_id: str = ""
    received_at: float = 0.0
    source: str = "notification"

    @classmethod
    def from_resource(
        cls,
        resource: dict[str, Any],
        *,
        subscription_id: str = "",
        tenant_id: str = "",
        received_at: float | None = None,
        source: str = "notification",
        fallback_user_id: str | None = None,
    ) -> PresenceChange:
        """Build from a Graph presence resource (decrypted notification or a presence read).

        Unknown availability or activity strings pass through untouched: the mapping decides.
        """
        user_id = resource.get("id") or fallback_user_id
        availability = resource.get("availability")
        activity = resource.get("activity")
        if not isinstance(user_id, str) or not carriable(user_id) or not user_id:
            raise PresenceFormatError("presence without id")
        if not isinstance(availability, str) or not isinstance(activity, str):
            raise PresenceFormatError("presence without availability/activity strings")
        if not carriable(availability) or not carriable(activity):
            raise PresenceFormatError("presence without availability/activity strings")
        sequence = resource.get("sequenceNumber")
        if isinstance(sequence, bool) or not (
            sequence is None or carriable(sequence) or isinstance(sequence, int)
        ):
            raise PresenceFormatError("sequenceNumber is neither text nor a number")
        if isinstance(sequence, int) and abs(sequence) >= 10**40:
            raise PresenceFormatError("sequenceNumber out of range")
        return cls(
            user_id=user_id,
            availability=availability,
            activity=activity,
            sequence=str(sequence) if sequence not in (None, "") else None,
            status_message=_status_text(resource.get("statusMessage")),
            subscription_id=subscription_id,
            tenant_id=tenant_id,
            received_at=time.time() if received_at is None else received_at,
            source=source,
        )

    def to_fields(self) -> dict[str, str]:
        # vars(), not asdict(): every field is a plain value, and asdict's deep copy costs a tenth
        # of the whole per-item work on the ingest path.
        return {"change": json.dumps(vars(self), separators=(",", ":"))}

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> PresenceChange:
        try:
            raw = json.loads(fields["change"])
            return cls(**raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise PresenceFormatError(f"unreadable stream entry: {exc}") from None


_MAX_TEXT = 1024
# One search in C instead of a generator over every character of every text of every item.
_NUL_OR_SURROGATE = re.compile("[\x00\ud800-\udfff]")


def carriable(value: Any, limit: int = _MAX_TEXT) -> bool:
    """Text every later stage (Redis, JSON logs, STARFACE) can carry: a string of at most ``limit``
    characters without NUL or lone surrogate (JSON admits both; Redis and logs cannot take them)."""
    return isinstance(value, str) and len(value) <= limit and _NUL_OR_SURROGATE.search(value) is None


def _status_text(value: Any) -> str | None:
    """``statusMessage`` is ``{message: {content, contentType}, ...}``; keep the text only."""
    if isinstance(value, dict):
        message = value.get("message")
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            content = str(message["content"])
            return content if not any(ch == "\x00" or "\ud800" <= ch <= "\udfff" for ch in content) else None
    return None
