"""Teams presence in the Graph sandbox: sessions, preferred presence, and how they aggregate.

Pure state on the controllable clock, no HTTP: presence sessions with their timeouts and expiry
(https://learn.microsoft.com/en-us/graph/api/presence-setpresence), preferred presence and the
presence resource (https://learn.microsoft.com/en-us/graph/api/resources/presence).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from service.graph import presence
from service.sandbox.clock import Clock
from service.sandbox.graphstate import format_datetime

# One vocabulary for the bridge and the sandbox: the shared lists of Graph's values.
AVAILABILITIES = frozenset(presence.AVAILABILITIES)
ACTIVITIES = frozenset(presence.ACTIVITIES)


def _pairs(*pairs: tuple[str, str]) -> frozenset[tuple[str, str]]:
    """Graph's fixed pair rules, checked against the shared vocabulary when the module loads."""
    for availability, activity in pairs:
        if availability not in AVAILABILITIES or activity not in ACTIVITIES:
            raise ValueError(f"{availability}/{activity} is not in service.graph.presence")
    return frozenset(pairs)


# setPresence and setUserPreferredPresence accept only these pairs:
# https://learn.microsoft.com/en-us/graph/api/presence-setpresence and .../presence-setuserpreferredpresence
SET_PRESENCE_COMBINATIONS = _pairs(
    ("Available", "Available"),
    ("Busy", "InACall"),
    ("Busy", "InAConferenceCall"),
    ("Away", "Away"),
    ("DoNotDisturb", "Presenting"),
)
PREFERRED_COMBINATIONS = _pairs(
    ("Available", "Available"),
    ("Busy", "Busy"),
    ("DoNotDisturb", "DoNotDisturb"),
    ("BeRightBack", "BeRightBack"),
    ("Away", "Away"),
    ("Offline", "OffWork"),
)
# setPresence: an Available session times out to idle after 5 minutes and to Away after 5 more.
IDLE_AFTER = 5 * 60
AWAY_AFTER = 10 * 60
IDLE_STATE = ("AvailableIdle", "Inactive")
AWAY_STATE = ("Away", "Away")
OFFLINE_STATE = ("Offline", "Offline")
SESSION_MIN = 5 * 60
SESSION_MAX = 4 * 3600
SESSION_DEFAULT = 5 * 60
# setPresence, aggregation: DoNotDisturb > Busy > Available > Away among sessions; the idle variants
# sit just below their active state, BeRightBack between Available and Away.
_RANK = {
    "DoNotDisturb": 90,
    "Busy": 80,
    "BusyIdle": 70,
    "Available": 60,
    "AvailableIdle": 50,
    "BeRightBack": 40,
    "Away": 30,
    "Offline": 10,
    "PresenceUnknown": 0,
}
# Activities that describe what the user does (a call, a meeting) survive out-of-office;
# the generic ones are replaced by OutOfOffice, as Teams shows "Available – Out of office".
_GENERIC_ACTIVITIES = frozenset(
    {"Available", "Away", "BeRightBack", "Busy", "DoNotDisturb", "Inactive", "Offline", "OffWork"}
)

HISTORY_LIMIT = 1000


@dataclass
class Session:
    id: str
    kind: str  # "teams" (a Teams client, driven by the control API) or "application" (setPresence)
    availability: str
    activity: str
    updated_at: float
    expires_at: float | None

    def state(self, now: float) -> tuple[str, str] | None:
        """The session's own state at ``now``; None once it has expired and disappeared."""
        if self.expires_at is not None and now >= self.expires_at:
            return None
        if self.availability == "Available":
            quiet = now - self.updated_at
            if quiet >= AWAY_AFTER:
                return AWAY_STATE
            if quiet >= IDLE_AFTER:
                return IDLE_STATE
        return self.availability, self.activity

    def deadlines(self) -> list[float]:
        times = [] if self.expires_at is None else [self.expires_at]
        if self.availability == "Available":
            times += [self.updated_at + IDLE_AFTER, self.updated_at + AWAY_AFTER]
        return times

    def public(self, now: float) -> dict[str, Any]:
        state = self.state(now)
        return {
            "id": self.id,
            "kind": self.kind,
            "availability": state[0] if state else None,
            "activity": state[1] if state else None,
            "updatedDateTime": format_datetime(self.updated_at),
            "expirationDateTime": None if self.expires_at is None else format_datetime(self.expires_at),
        }


@dataclass
class Preferred:
    availability: str
    activity: str
    expires_at: float


@dataclass
class UserPresence:
    user_id: str
    sessions: dict[str, Session] = field(default_factory=dict)
    preferred: Preferred | None = None
    status_message: dict[str, Any] | None = None
    out_of_office: bool = False
    out_of_office_message: str | None = None
    sequence: int = 0
    published: tuple[Any, ...] | None = None
    history: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=HISTORY_LIMIT))


class PresenceBook:
    """Per-user presence sessions; ``refresh`` publishes every aggregated change once."""

    def __init__(self, clock: Clock, on_change: Callable[[str, dict[str, Any]], None]) -> None:
        self.clock = clock
        self._users: dict[str, UserPresence] = {}
        self._on_change = on_change

    def user(self, user_id: str) -> UserPresence:
        state = self._users.get(user_id)
        if state is None:
            state = self._users[user_id] = UserPresence(user_id)
            self._publish(state, self.clock.now(), "created")
        return state

    def set_session(
        self,
        user_id: str,
        session_id: str,
        *,
        kind: str,
        availability: str,
        activity: str,
        duration: float | None,
        cause: str,
    ) -> Session:
        now = self.clock.now()
        state = self.user(user_id)
        session = Session(
            id=session_id,
            kind=kind,
            availability=availability,
            activity=activity,
            updated_at=now,
            expires_at=None if duration is None else now + duration,
        )
        state.sessions[session_id] = session
        self.refresh(user_id, cause)
        return session

    def clear_session(self, user_id: str, session_id: str, cause: str) -> bool:
        state = self.user(user_id)
        now = self.clock.now()
        session = state.sessions.get(session_id)
        if session is None or session.state(now) is None:
            state.sessions.pop(session_id, None)
            return False
        del state.sessions[session_id]
        self.refresh(user_id, cause)
        return True

    def set_preferred(self, user_id: str, availability: str, activity: str, duration: float) -> None:
        state = self.user(user_id)
        state.preferred = Preferred(availability, activity, self.clock.now() + duration)
        self.refresh(user_id, "setUserPreferredPresence")

    def clear_preferred(self, user_id: str) -> None:
        self.user(user_id).preferred = None
        self.refresh(user_id, "clearUserPreferredPresence")

    def set_status_message(self, user_id: str, message: dict[str, Any] | None, cause: str) -> None:
        self.user(user_id).status_message = message
        self.refresh(user_id, cause)

    def set_out_of_office(self, user_id: str, active: bool, message: str | None) -> None:
        state = self.user(user_id)
        state.out_of_office = active
        state.out_of_office_message = message
        self.refresh(user_id, "outOfOffice")

    def aggregate(self, state: UserPresence, now: float) -> tuple[str, str]:
        live: list[tuple[Session, tuple[str, str]]] = []
        for session in state.sessions.values():
            current = session.state(now)
            if current is not None:
                live.append((session, current))
        if not live:
            # setUserPreferredPresence: preferred presence only applies while at least one session exists.
            availability, activity = OFFLINE_STATE
        elif state.preferred is not None and state.preferred.expires_at > now:
            availability, activity = state.preferred.availability, state.preferred.activity
        else:
            # Highest rank wins; among equals the most recently updated session.
            _, (availability, activity) = max(
                live, key=lambda item: (_RANK.get(item[1][0], 0), item[0].updated_at)
            )
        if state.out_of_office and activity in _GENERIC_ACTIVITIES:
            activity = "OutOfOffice"
        return availability, activity

    def resource(self, user_id: str) -> dict[str, Any]:
        """The presence resource as Graph returns it, after publishing any time-based change."""
        self.refresh(user_id, "clock")
        return self.snapshot(user_id)

    def snapshot(self, user_id: str) -> dict[str, Any]:
        """The presence resource as last published (what a rich notification encrypts)."""
        state = self.user(user_id)
        availability, activity = self.aggregate(state, self.clock.now())
        return {
            "@odata.type": "#microsoft.graph.presence",
            "id": user_id,
            "availability": availability,
            "activity": activity,
            "sequenceNumber": f"{state.sequence:020d}",
            "statusMessage": state.status_message,
            "outOfOfficeSettings": {
                "message": state.out_of_office_message,
                "isOutOfOffice": state.out_of_office,
            },
        }

    def refresh(self, user_id: str | None = None, cause: str = "clock") -> list[str]:
        """Recompute aggregates (all users, or one), publish changes; returns the changed ids."""
        now = self.clock.now()
        targets = [self.user(user_id)] if user_id is not None else list(self._users.values())
        changed: list[str] = []
        for state in targets:
            for session_id in [s.id for s in state.sessions.values() if s.state(now) is None]:
                del state.sessions[session_id]
            if state.preferred is not None and state.preferred.expires_at <= now:
                state.preferred = None
            if self._publish(state, now, cause):
                changed.append(state.user_id)
        return changed

    def next_deadline(self) -> float | None:
        times: list[float] = []
        now = self.clock.now()
        for state in self._users.values():
            for session in state.sessions.values():
                times.extend(t for t in session.deadlines() if t > now)
            if state.preferred is not None and state.preferred.expires_at > now:
                times.append(state.preferred.expires_at)
        return min(times) if times else None

    def sessions(self, user_id: str) -> list[dict[str, Any]]:
        now = self.clock.now()
        return [s.public(now) for s in self.user(user_id).sessions.values()]

    def history(self, user_id: str) -> list[dict[str, Any]]:
        return list(self.user(user_id).history)

    def _publish(self, state: UserPresence, now: float, cause: str) -> bool:
        availability, activity = self.aggregate(state, now)
        fingerprint = (
            availability,
            activity,
            repr(state.status_message),
            state.out_of_office,
            state.out_of_office_message,
        )
        if fingerprint == state.published:
            return False
        first = state.published is None
        state.published = fingerprint
        state.sequence += 1
        entry = {
            "sequenceNumber": f"{state.sequence:020d}",
            "availability": availability,
            "activity": activity,
            "at": format_datetime(now),
            "cause": cause,
        }
        state.history.append(entry)
        if not first:
            self._on_change(state.user_id, entry)
        return True
