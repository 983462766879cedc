"""STARFACE protocol constants and the login-secret formulas (docs/protocols.md, "REST" and "UCI").

The gateway and the sandbox both read these, so a fact that turns out different on a real PBX
(marked "Inferred:", see docs/protocols.md, "What is not documented") is changed here once.
"""

from __future__ import annotations

import hashlib

REST_VERSION_HEADER = "X-Version"
REST_VERSION = "2"
REST_TOKEN_HEADER = "authToken"
REST_TOKEN_LIFETIME_SECONDS = 4 * 3600
# The PowerShell client re-logs in after 3.5 h; we do the same to never use a token at its edge.
REST_TOKEN_RENEW_AFTER_SECONDS = int(3.5 * 3600)

OAUTH_TOKEN_PATH = "/auth/realms/pbx/oauth2/token"
OAUTH_CLIENT_ID = "rest-client-headless"
OAUTH_SCOPE = "login"

UCI_PATH = "/xml-rpc"
UCI_AUTH_PARAM = "de.vertico.starface.auth"
UCI_JWT_PARAM = "de.vertico.starface.jwt"
UCI_CALLBACK_HOST = "de.vertico.starface.callback.host"
UCI_CALLBACK_PORT = "de.vertico.starface.callback.port"
UCI_CALLBACK_PATH = "de.vertico.starface.callback.path"
UCI_CALLBACK_TYPE = "de.vertico.starface.callback.type"
# Inferred: STARFACE appears to append the user's login ID to the callback URL (visual4/iahcti).
UCI_CALLBACK_USER_PARAM = "de.vertico.starface.user"

# Inferred: What a PBX answers for a session it does not know; the gateway re-logs in on any fault
# from keepAlive, so only the sandbox depends on the exact values.
FAULT_NOT_LOGGED_IN = 1
FAULT_NOT_LOGGED_IN_TEXT = "user is not logged in"

# Inferred: getUserState documents avatarHash, chatPresence, telephonyState, chatPresenceMessage and
# redirectAlwaysActive; the key carrying the DND flag is an assumption kept in this one place.
USER_STATE_DND_KEY = "doNotDisturb"
USER_STATE_TEXT_KEY = "chatPresenceMessage"


def method(namespace: str, family: str, name: str) -> str:
    """Full UCI method name, e.g. ``ucp.v30.requests.userState.getUserState``."""
    return f"ucp.{namespace}.{family}.{name}"


def call_event_service(namespace: str) -> str:
    return f"ucp.{namespace}.events.call"


def _sha512hex(text: str) -> str:
    return hashlib.sha512(text.encode("utf-8")).hexdigest()


def rest_login_secret(login: str, password: str, nonce: str) -> str:
    """``login:sha512hex(login + nonce + sha512hex(password))`` — no ``*`` here, unlike UCI."""
    return f"{login}:{_sha512hex(login + nonce + _sha512hex(password))}"


def uci_auth_token(login: str, password: str) -> str:
    """``login:sha512hex(login + "*" + sha512hex(password))`` (STARFACE >= 6.4.2.19)."""
    return f"{login}:{_sha512hex(login + '*' + _sha512hex(password))}"
