"""What the STARFACE sandbox PBX holds (users, groups, sessions, calls) and the errors it raises."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from service.starface import protocol as sp

CallDirection = Literal["incoming", "outgoing"]


# -- errors ------------------------------------------------------------------------------------


class SandboxError(Exception):
    """Base of the sandbox's own errors; the app maps each subclass to one HTTP answer."""


class NotFound(SandboxError):
    def __init__(self, kind: str, key: str) -> None:
        self.kind = kind
        self.key = key
        super().__init__(f"no {kind} {key!r}")


class Conflict(SandboxError):
    def __init__(self, kind: str, key: str) -> None:
        self.kind = kind
        self.key = key
        super().__init__(f"{kind} {key!r} already exists")


class InvalidInput(SandboxError):
    def __init__(self, field_name: str, problem: str) -> None:
        self.field_name = field_name
        self.problem = problem
        super().__init__(f"{field_name}: {problem}")


class AuthenticationFailed(SandboxError):
    """Credentials, nonce or token not accepted; ``reason`` is a short label, never the secret."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class OAuthError(SandboxError):
    """A Keycloak-style token endpoint error (``error`` / ``error_description``)."""

    def __init__(self, status: int, error: str, description: str) -> None:
        self.status = status
        self.error = error
        self.description = description
        super().__init__(f"{error}: {description}")


class NotLoggedIn(SandboxError):
    def __init__(self, login: str) -> None:
        self.login = login
        super().__init__(f"user {login} has no UCI session")


class CallTransitionError(SandboxError):
    def __init__(self, call_id: str, state: str, action: str) -> None:
        self.call_id = call_id
        self.state = state
        self.action = action
        super().__init__(f"call {call_id} is {state}; cannot {action}")


# -- records -----------------------------------------------------------------------------------


@dataclass
class User:
    id: int
    login: str
    password: str = field(repr=False)
    email: str
    first_name: str
    family_name: str
    number: str
    oauth_allowed: bool = False
    language: str = "de"
    person_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    dnd: bool = False
    status_text: str = ""
    chat_presence: str = "AVAILABLE"

    @property
    def display_name(self) -> str:
        return f"{self.first_name} {self.family_name}".strip()

    def rest_view(self) -> dict[str, Any]:
        """The Swagger ``User`` object; ``password`` is documented as empty when fetched."""
        return {
            "id": self.id,
            "login": self.login,
            "email": self.email,
            "firstName": self.first_name,
            "familyName": self.family_name,
            "language": self.language,
            "namespace": "",
            "personId": self.person_id,
            "password": "",
            "faxCallerId": "",
            "faxCoverPage": False,
            "faxEmailJournal": False,
            "faxHeader": "",
            "missedCallReport": False,
        }


@dataclass
class Group:
    id: int
    name: str
    internal_number: str
    external_number: str
    members: list[str]  # logins, in insertion order

    @property
    def group_id(self) -> str:
        # The Swagger gives a group both an integer ``id`` and a string ``groupId``; [INF] the
        # string form is the id as text.
        return str(self.id)


@dataclass(frozen=True)
class Callback:
    type: str
    host: str
    port: int
    path: str

    def url(self, login: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        separator = "&" if "?" in self.path else "?"
        return f"{self.type}://{host}:{self.port}{self.path}{separator}{sp.UCI_CALLBACK_USER_PARAM}={login}"


@dataclass
class UciSession:
    id: str
    login: str
    created_at: float
    last_seen: float
    callback: Callback | None
    subscriptions: set[str] = field(default_factory=set)
    # Requests of this session that carried the callback parameters (public UCI clients send them
    # on every request; whether the PBX needs that is not documented).
    callback_requests: int = 0

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "login": self.login,
            "createdAt": self.created_at,
            "lastSeen": self.last_seen,
            "callbackUrl": self.callback.url(self.login) if self.callback else None,
            "callbackRequests": self.callback_requests,
            "subscriptions": sorted(self.subscriptions),
        }


@dataclass(frozen=True)
class HistoryEntry:
    at: float
    value: bool | str
    source: str  # "uci" (a session set it) or "phone" (set through the control API)
    session_id: str | None

    def view(self) -> dict[str, Any]:
        return {"at": self.at, "value": self.value, "source": self.source, "session": self.session_id}


@dataclass
class Call:
    id: str
    login: str
    direction: CallDirection
    remote_number: str
    remote_name: str
    group_id: str
    state: str
    started_at: float
    connected: bool = False

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "login": self.login,
            "direction": self.direction,
            "remoteNumber": self.remote_number,
            "remoteName": self.remote_name,
            "groupID": self.group_id,
            "state": self.state,
            "startedAt": self.started_at,
            "connected": self.connected,
        }


@dataclass(frozen=True)
class CallEvent:
    """One ``receiveCallState`` struct bound for the session that was live when it happened."""

    login: str
    session_id: str
    callback: Callback
    method: str
    struct: dict[str, Any]


@dataclass(frozen=True)
class SessionDrop:
    at: float
    login: str
    session_id: str
    reason: str  # "expired", "logout", "replaced", "dropped", "restart"

    def view(self) -> dict[str, Any]:
        return {"at": self.at, "login": self.login, "session": self.session_id, "reason": self.reason}
