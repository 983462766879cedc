"""The STARFACE sandbox's PBX state: users, groups, logins, UCI sessions, DND/status text and calls.

Pure state and rules, no HTTP: the Starlette app (``starface_app``) translates requests into these
calls and the dispatcher (``starface_callbacks``) posts the call events this module produces.
Everything runs on the sandbox's event loop, so no locks are needed; time comes from the shared
controllable ``Clock`` so tests jump over the 4 h REST token lifetime or a 60 s UCI idle timeout.

Facts follow the STARFACE REST and UCI documentation (https://knowledge.starface.de) and
``docs/starface-wire.md``; the choices made where
the reference is silent or marked [INF] are listed in ``docs/sandbox-starface.md``.
"""

from __future__ import annotations

import hmac
import secrets
import uuid
from collections import OrderedDict
from typing import Any, Literal

import jwt

from service.sandbox.clock import Clock
from service.sandbox.starface_records import (
    AuthenticationFailed,
    Call,
    Callback,
    CallDirection,
    CallEvent,
    CallTransitionError,
    Conflict,
    Group,
    HistoryEntry,
    InvalidInput,
    NotFound,
    NotLoggedIn,
    OAuthError,
    SessionDrop,
    UciSession,
    User,
)
from service.starface import protocol as sp

OAUTH_ACCESS_LIFETIME_SECONDS = 300
OAUTH_REFRESH_LIFETIME_SECONDS = 21600
# [INF] How long a REST login nonce stays usable; STARFACE does not document it.
NONCE_LIFETIME_SECONDS = 300
# Bounds that keep a misbehaving client from growing the sandbox without limit.
MAX_OUTSTANDING_NONCES = 10_000
MAX_REST_TOKENS = 10_000
MAX_HISTORY_PER_USER = 1_000
DEFAULT_SESSION_TIMEOUT_SECONDS = 60.0

TelephonyState = Literal["AVAILABLE", "RINGING", "ACTIVE"]


# -- the PBX -----------------------------------------------------------------------------------


def _same(left: str, right: str) -> bool:
    return hmac.compare_digest(left.encode("utf-8"), right.encode("utf-8"))


class Pbx:
    """All sandbox state.  Methods raise ``SandboxError`` subclasses; nothing here does I/O."""

    def __init__(
        self,
        clock: Clock,
        *,
        namespace: str = "v30",
        session_timeout: float = DEFAULT_SESSION_TIMEOUT_SECONDS,
        oauth_client_secret: str | None = None,
        issuer: str = "https://starface-sandbox/auth/realms/pbx",
    ) -> None:
        self.clock = clock
        self.namespace = namespace
        self.session_timeout = session_timeout
        self.oauth_client_secret = oauth_client_secret or secrets.token_urlsafe(24)
        self.issuer = issuer
        self._jwt_key = secrets.token_bytes(32)
        self._users: dict[str, User] = {}
        self._groups: dict[int, Group] = {}
        self._next_user_id = 1000
        self._next_group_id = 5000
        self._nonces: OrderedDict[str, float] = OrderedDict()
        self._rest_tokens: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._sessions: dict[str, UciSession] = {}
        self._drops: list[SessionDrop] = []
        self._calls: dict[str, Call] = {}
        self._ended_calls: list[Call] = []
        self._dnd_history: dict[str, list[HistoryEntry]] = {}
        self._text_history: dict[str, list[HistoryEntry]] = {}

    # -- directory ---------------------------------------------------------------------------

    def add_user(
        self,
        login: str,
        password: str,
        *,
        email: str,
        first_name: str = "",
        family_name: str = "",
        number: str | None = None,
        oauth_allowed: bool = False,
    ) -> User:
        if not login or not login.isascii() or any(c in login for c in ":*/?&# "):
            raise InvalidInput("login", "must be non-empty ASCII without ':*/?&#' or spaces")
        if not password:
            raise InvalidInput("password", "must not be empty")
        if login in self._users:
            raise Conflict("user", login)
        self._next_user_id += 1
        user = User(
            id=self._next_user_id,
            login=login,
            password=password,
            email=email,
            first_name=first_name,
            family_name=family_name,
            number=number or login,
            oauth_allowed=oauth_allowed,
        )
        self._users[login] = user
        self._dnd_history[login] = []
        self._text_history[login] = []
        return user

    def update_user(self, login: str, changes: dict[str, Any]) -> User:
        user = self.user(login)
        for key, value in changes.items():
            if key == "password":
                if not isinstance(value, str) or not value:
                    raise InvalidInput("password", "must be a non-empty string")
                user.password = value
            elif key in ("email", "first_name", "family_name", "number", "chat_presence"):
                if not isinstance(value, str):
                    raise InvalidInput(key, "must be a string")
                setattr(user, key, value)
            elif key == "oauth_allowed":
                if not isinstance(value, bool):
                    raise InvalidInput(key, "must be true or false")
                user.oauth_allowed = value
            else:
                raise InvalidInput(key, "cannot be changed")
        return user

    def remove_user(self, login: str) -> None:
        self.user(login)
        del self._users[login]
        self._drop_session(login, "dropped")
        for group in self._groups.values():
            if login in group.members:
                group.members.remove(login)
        for token, (owner, _) in list(self._rest_tokens.items()):
            if owner == login:
                del self._rest_tokens[token]

    def user(self, login: str) -> User:
        try:
            return self._users[login]
        except KeyError:
            raise NotFound("user", login) from None

    def user_by_id(self, user_id: int) -> User:
        for user in self._users.values():
            if user.id == user_id:
                return user
        raise NotFound("user", str(user_id))

    def users(self, search: str = "") -> list[User]:
        needle = search.strip().lower()
        found = sorted(self._users.values(), key=lambda u: u.id)
        if not needle:
            return found
        return [
            u
            for u in found
            if needle in u.login.lower()
            or needle in u.email.lower()
            or needle in u.first_name.lower()
            or needle in u.family_name.lower()
        ]

    def add_group(
        self, name: str, members: list[str], *, internal_number: str = "", external_number: str = ""
    ) -> Group:
        if not name:
            raise InvalidInput("name", "must not be empty")
        if any(g.name == name for g in self._groups.values()):
            raise Conflict("group", name)
        for login in members:
            self.user(login)
        self._next_group_id += 1
        group = Group(
            id=self._next_group_id,
            name=name,
            internal_number=internal_number or str(self._next_group_id),
            external_number=external_number,
            members=list(dict.fromkeys(members)),
        )
        self._groups[group.id] = group
        return group

    def set_group_members(self, group_id: int, members: list[str]) -> Group:
        group = self.group(group_id)
        for login in members:
            self.user(login)
        group.members = list(dict.fromkeys(members))
        return group

    def remove_group(self, group_id: int) -> None:
        self.group(group_id)
        del self._groups[group_id]

    def group(self, group_id: int) -> Group:
        try:
            return self._groups[group_id]
        except KeyError:
            raise NotFound("group", str(group_id)) from None

    def groups(self, search: str = "") -> list[Group]:
        needle = search.strip().lower()
        found = sorted(self._groups.values(), key=lambda g: g.id)
        return [g for g in found if needle in g.name.lower()] if needle else found

    # -- REST legacy login (docs/starface-wire.md, REST) ---------------------------------------------------

    def issue_nonce(self) -> str:
        now = self.clock.now()
        nonce = secrets.token_hex(13)
        self._nonces[nonce] = now
        while len(self._nonces) > MAX_OUTSTANDING_NONCES:
            self._nonces.popitem(last=False)
        return nonce

    def rest_login(self, login_type: str, nonce: str, secret: str) -> str:
        """Check a ``Login`` object; the nonce is spent whether or not the secret is right."""
        issued = self._nonces.pop(nonce, None)
        if issued is None or self.clock.now() - issued > NONCE_LIFETIME_SECONDS:
            raise AuthenticationFailed("unknown or used nonce")
        if login_type != "Internal":
            raise AuthenticationFailed("unsupported loginType")
        login, sep, _ = secret.partition(":")
        user = self._users.get(login)
        if not sep or user is None:
            raise AuthenticationFailed("invalid login")
        expected = sp.rest_login_secret(login, user.password, nonce)
        if not _same(secret, expected):
            raise AuthenticationFailed("invalid login")
        token = secrets.token_hex(24)
        self._rest_tokens[token] = (login, self.clock.now())
        while len(self._rest_tokens) > MAX_REST_TOKENS:
            self._rest_tokens.popitem(last=False)
        return token

    def rest_logout(self, token: str) -> None:
        self._rest_tokens.pop(token, None)

    def user_for_rest_token(self, token: str) -> User:
        entry = self._rest_tokens.get(token)
        if entry is None:
            raise AuthenticationFailed("unknown token")
        login, issued = entry
        if self.clock.now() - issued >= sp.REST_TOKEN_LIFETIME_SECONDS:
            del self._rest_tokens[token]
            raise AuthenticationFailed("token expired")
        user = self._users.get(login)
        if user is None:
            raise AuthenticationFailed("unknown token")
        return user

    # -- STARFACE 10 OAuth (docs/starface-wire.md, REST) ----------------------------------------------------

    def _check_client(self, client_id: str, client_secret: str) -> None:
        if client_id != sp.OAUTH_CLIENT_ID or not _same(client_secret, self.oauth_client_secret):
            raise OAuthError(401, "invalid_client", "Invalid client or Invalid client credentials")

    def _tokens_for(self, user: User, session_state: str) -> dict[str, Any]:
        now = int(self.clock.now())
        common = {
            "iss": self.issuer,
            "sub": str(user.id),
            "azp": sp.OAUTH_CLIENT_ID,
            "preferred_username": user.login,
            "scope": sp.OAUTH_SCOPE,
            "sid": session_state,
            "iat": now,
        }
        access = jwt.encode(
            {**common, "typ": "Bearer", "exp": now + OAUTH_ACCESS_LIFETIME_SECONDS, "jti": str(uuid.uuid4())},
            self._jwt_key,
            algorithm="HS256",
        )
        refresh = jwt.encode(
            {
                **common,
                "typ": "Refresh",
                "exp": now + OAUTH_REFRESH_LIFETIME_SECONDS,
                "jti": str(uuid.uuid4()),
            },
            self._jwt_key,
            algorithm="HS256",
        )
        return {
            "access_token": access,
            "expires_in": OAUTH_ACCESS_LIFETIME_SECONDS,
            "refresh_expires_in": OAUTH_REFRESH_LIFETIME_SECONDS,
            "refresh_token": refresh,
            "token_type": "Bearer",
            "not-before-policy": 0,
            "session_state": session_state,
            "scope": sp.OAUTH_SCOPE,
        }

    def oauth_token(self, form: dict[str, str]) -> dict[str, Any]:
        grant = form.get("grant_type", "")
        if grant not in ("password", "refresh_token"):
            raise OAuthError(400, "unsupported_grant_type", "Unsupported grant_type")
        self._check_client(form.get("client_id", ""), form.get("client_secret", ""))
        if grant == "password":
            user = self._users.get(form.get("username", ""))
            if user is None or not _same(form.get("password", ""), user.password):
                raise OAuthError(401, "invalid_grant", "Invalid user credentials")
            if not user.oauth_allowed:
                raise OAuthError(401, "invalid_grant", "Account is not allowed to use the password grant")
            return self._tokens_for(user, str(uuid.uuid4()))
        claims = self._decode(form.get("refresh_token", ""), "Refresh")
        if claims is None:
            raise OAuthError(400, "invalid_grant", "Invalid refresh token")
        user = self._users.get(str(claims.get("preferred_username", "")))
        if user is None or not user.oauth_allowed:
            raise OAuthError(400, "invalid_grant", "Invalid refresh token")
        return self._tokens_for(user, str(claims.get("sid", "")))

    def _decode(self, token: str, typ: str) -> dict[str, Any] | None:
        try:
            # The sandbox clock, not the wall clock, decides expiry, so PyJWT's time checks are off.
            claims: dict[str, Any] = jwt.decode(
                token,
                self._jwt_key,
                algorithms=["HS256"],
                options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
            )
        except jwt.PyJWTError:
            return None
        if claims.get("typ") != typ or not isinstance(claims.get("exp"), int):
            return None
        if self.clock.now() >= claims["exp"]:
            return None
        return claims

    def user_for_bearer(self, token: str) -> User:
        claims = self._decode(token, "Bearer")
        if claims is None:
            raise AuthenticationFailed("invalid or expired access token")
        user = self._users.get(str(claims.get("preferred_username", "")))
        if user is None:
            raise AuthenticationFailed("invalid or expired access token")
        return user

    # -- UCI (docs/starface-wire.md, UCI) -------------------------------------------------------------------

    def user_for_uci(self, auth: str | None, jwt_token: str | None) -> User:
        if jwt_token:
            return self.user_for_bearer(jwt_token)
        if not auth:
            raise AuthenticationFailed("no credentials")
        login, sep, _ = auth.partition(":")
        user = self._users.get(login)
        if not sep or user is None:
            raise AuthenticationFailed("invalid credentials")
        expected = sp.uci_auth_token(login, user.password)
        if not _same(auth, expected):
            raise AuthenticationFailed("invalid credentials")
        return user

    def session(self, login: str) -> UciSession | None:
        """The user's live session; one idle past the timeout is dropped here, on first look."""
        found = self._sessions.get(login)
        if found is not None and self.clock.now() - found.last_seen > self.session_timeout:
            self._drop_session(login, "expired")
            return None
        return found

    def sessions(self) -> list[UciSession]:
        return [s for login in list(self._sessions) if (s := self.session(login)) is not None]

    def session_drops(self) -> list[SessionDrop]:
        for login in list(self._sessions):
            self.session(login)  # records expiries that nobody has looked at yet
        return list(self._drops)

    def _drop_session(self, login: str, reason: str) -> bool:
        found = self._sessions.pop(login, None)
        if found is None:
            return False
        self._drops.append(SessionDrop(self.clock.now(), login, found.id, reason))
        del self._drops[: -MAX_HISTORY_PER_USER * 10]
        return True

    def uci_login(self, user: User, callback: Callback | None) -> UciSession:
        # [INF] One UCI session per user: a second login replaces the first (and its callback).
        self._drop_session(user.login, "replaced")
        now = self.clock.now()
        created = UciSession(str(uuid.uuid4()), user.login, now, now, callback)
        self._sessions[user.login] = created
        return created

    def require_session(self, user: User) -> UciSession:
        found = self.session(user.login)
        if found is None:
            raise NotLoggedIn(user.login)
        found.last_seen = self.clock.now()
        return found

    def uci_logout(self, user: User) -> None:
        self.require_session(user)
        self._drop_session(user.login, "logout")

    def drop_session(self, login: str) -> bool:
        self.user(login)
        return self._drop_session(login, "dropped")

    def restart(self) -> None:
        """As after a PBX reboot: every UCI session and REST token is gone; calls are cut."""
        for login in list(self._sessions):
            self._drop_session(login, "restart")
        self._rest_tokens.clear()
        self._nonces.clear()
        for call in list(self._calls.values()):
            self._ended_calls.append(call)
        self._calls.clear()

    # -- DND and status text -------------------------------------------------------------------

    def set_dnd(self, login: str, enabled: bool, source: str, session_id: str | None) -> None:
        user = self.user(login)
        user.dnd = enabled
        self._record(self._dnd_history[login], HistoryEntry(self.clock.now(), enabled, source, session_id))

    def set_status_text(self, login: str, text: str, source: str, session_id: str | None) -> None:
        user = self.user(login)
        user.status_text = text
        self._record(self._text_history[login], HistoryEntry(self.clock.now(), text, source, session_id))

    @staticmethod
    def _record(history: list[HistoryEntry], entry: HistoryEntry) -> None:
        history.append(entry)
        del history[:-MAX_HISTORY_PER_USER]

    def dnd_history(self, login: str) -> list[HistoryEntry]:
        self.user(login)
        return list(self._dnd_history[login])

    def text_history(self, login: str) -> list[HistoryEntry]:
        self.user(login)
        return list(self._text_history[login])

    def telephony_state(self, login: str) -> TelephonyState:
        calls = [c for c in self._calls.values() if c.login == login]
        # [INF] An outgoing call being set up (PROCEEDING) already shows the user as busy.
        if any(c.state in ("CONNECTED", "PROCEEDING") for c in calls):
            return "ACTIVE"
        if any(c.state == "RINGING" for c in calls):
            return "RINGING"
        return "AVAILABLE"

    def user_state(self, login: str) -> dict[str, Any]:
        user = self.user(login)
        return {
            "avatarHash": "",
            "chatPresence": user.chat_presence,
            "telephonyState": self.telephony_state(login),
            sp.USER_STATE_TEXT_KEY: user.status_text,
            "redirectAlwaysActive": False,
            sp.USER_STATE_DND_KEY: user.dnd,
        }

    # -- calls -----------------------------------------------------------------------------------

    def place_call(
        self,
        login: str,
        *,
        direction: CallDirection,
        remote_number: str,
        remote_name: str,
        group_id: str = "",
        sparse_first: bool,
        empty_first_state: bool = False,
    ) -> tuple[Call, list[CallEvent]]:
        self.user(login)
        if direction not in ("incoming", "outgoing"):
            raise InvalidInput("direction", "must be incoming or outgoing")
        state = "RINGING" if direction == "incoming" else "PROCEEDING"
        call = Call(
            id=str(uuid.uuid4()),
            login=login,
            direction=direction,
            remote_number=remote_number,
            remote_name=remote_name,
            group_id=group_id,
            state=state,
            started_at=self.clock.now(),
        )
        self._calls[call.id] = call
        events: list[CallEvent] = []
        if sparse_first:
            # "first call state events [may not] provide any details" (UCI javadoc)
            events += self._events(call, full=False, state="" if empty_first_state else state)
        events += self._events(call, full=True, state=state)
        return call, events

    def answer_call(self, call_id: str) -> tuple[Call, list[CallEvent]]:
        call = self.call(call_id)
        if call.state not in ("RINGING", "PROCEEDING"):
            raise CallTransitionError(call_id, call.state, "answer")
        call.state = "CONNECTED"
        call.connected = True
        return call, self._events(call, full=True, state="CONNECTED")

    def hangup_call(self, call_id: str) -> tuple[Call, list[CallEvent]]:
        call = self.call(call_id)
        call.state = "HANGUP"
        del self._calls[call_id]
        self._ended_calls.append(call)
        del self._ended_calls[:-1000]
        return call, self._events(call, full=True, state="HANGUP")

    def call(self, call_id: str) -> Call:
        try:
            return self._calls[call_id]
        except KeyError:
            raise NotFound("call", call_id) from None

    def calls(self) -> list[Call]:
        return list(self._calls.values())

    def ended_calls(self) -> list[Call]:
        return list(self._ended_calls)

    def active_calls(self, login: str) -> list[Call]:
        """The user's calls that have not hung up (what ``getCallIds`` answers)."""
        return [c for c in self.calls() if c.login == login]

    def call_struct(self, call: Call, *, full: bool, state: str) -> dict[str, Any]:
        """A call as ``receiveCallState`` and ``getCallState`` carry it."""
        user = self.user(call.login)
        if call.direction == "incoming":
            caller = (call.remote_number, call.remote_name)
            called = (user.number, user.display_name)
        else:
            caller = (user.number, user.display_name)
            called = (call.remote_number, call.remote_name)
        return {
            "id": call.id,
            "state": state,
            "timestamp": int(self.clock.now() * 1000),
            "callerNumber": caller[0] if full else "",
            "callerName": caller[1] if full else "",
            "calledNumber": called[0] if full else "",
            "calledName": called[1] if full else "",
            "groupID": call.group_id,
        }

    def _events(self, call: Call, *, full: bool, state: str) -> list[CallEvent]:
        live = self.session(call.login)
        service = sp.call_event_service(self.namespace)
        if live is None or live.callback is None or service not in live.subscriptions:
            return []
        struct = self.call_struct(call, full=full, state=state)
        method = sp.method(self.namespace, "events.call", "receiveCallState")
        return [CallEvent(call.login, live.id, live.callback, method, struct)]
