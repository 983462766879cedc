"""The one interface the reconciler uses to change a user's STARFACE state.

Only UCI (one XML-RPC session per user, ``service.starface.sessions``) implements it today.  A PBX-side
module or OneHub would be a second implementation of ``StarfaceGateway``; the reconciler would not
change.  Errors are small types carrying data, never secrets: a login ID is not secret, a password
or token is, so no error here ever holds one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from service.starface import protocol as sp


class GatewayError(Exception):
    """Base of everything a STARFACE gateway raises on purpose."""


class CredentialsMissing(GatewayError):
    """No STARFACE password is stored for ``login``."""

    def __init__(self, login: str) -> None:
        self.login = login
        super().__init__(f"no STARFACE credentials stored for login {login!r}")


class CredentialsUnreadable(GatewayError):
    """The stored password for ``login`` cannot be decrypted (BRIDGE_SECRET_KEY changed?)."""

    def __init__(self, login: str) -> None:
        self.login = login
        super().__init__(f"stored STARFACE credentials for login {login!r} cannot be decrypted")


class LoginRefused(GatewayError):
    """STARFACE refused the credentials of ``login`` (wrong password, locked, no permission)."""

    def __init__(self, login: str, reason: str = "credentials refused") -> None:
        self.login = login
        self.reason = reason
        super().__init__(f"STARFACE refused login {login!r}: {reason}")


class SessionExpired(GatewayError):
    """The PBX no longer knows the UCI session of ``login``; a new login is needed."""

    def __init__(self, login: str, fault_code: int | None = None, fault_text: str = "") -> None:
        self.login = login
        self.fault_code = fault_code
        self.fault_text = fault_text
        super().__init__(f"STARFACE dropped the UCI session of login {login!r}")


class StarfaceUnavailable(GatewayError):
    """The PBX did not answer usefully (network, timeout, HTTP error, unreadable body)."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(f"STARFACE unavailable: {detail}")


class UnknownUser(GatewayError):
    """``login`` is not among the selected STARFACE users."""

    def __init__(self, login: str) -> None:
        self.login = login
        super().__init__(f"login {login!r} is not a selected STARFACE user")


@dataclass(frozen=True)
class UserState:
    """What the PBX reports for one user; ``None`` where the answer did not say."""

    login: str
    dnd: bool | None
    status_text: str | None
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_uci(cls, login: str, state: Any) -> UserState:
        if not isinstance(state, dict):
            raise StarfaceUnavailable("getUserState did not answer a struct")
        dnd = state.get(sp.USER_STATE_DND_KEY)
        text = state.get(sp.USER_STATE_TEXT_KEY)
        return cls(
            login=login,
            dnd=dnd if isinstance(dnd, bool) else None,
            status_text=text if isinstance(text, str) else None,
            raw=dict(state),
        )


@runtime_checkable
class StarfaceGateway(Protocol):
    """Set DND, set the chat status text, and read back what the PBX holds, per login ID."""

    async def set_dnd(self, login: str, enabled: bool) -> None: ...

    async def set_status_text(self, login: str, text: str) -> None: ...

    async def read_state(self, login: str) -> UserState: ...
