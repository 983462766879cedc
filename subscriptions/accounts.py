"""The service accounts that hold presence subscriptions: stored passwords and operator-facing health.

A service account that can no longer obtain delegated tokens (refresh token revoked, password
changed, consent withdrawn, MFA now required) needs a human.  Its health turns into a clear alert
in three places at once: the status hash (``presence-bridge status``), one error log line per
change, and a gauge.  The scheduler keeps running for every other account instead of crash-looping.
"""

from __future__ import annotations

import enum
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from service.core import keys
from service.core.secretbox import SecretBox
from service.core.storage import decoded
from subscriptions import metrics

log = logging.getLogger(__name__)


class AccountState(enum.StrEnum):
    OK = "ok"
    # No usable refresh token and no stored password that works: run ``presence-bridge login``.
    LOGIN_REQUIRED = "login_required"
    # Entra or Graph says the account lacks consent for Presence.Read.All.
    CONSENT_REQUIRED = "consent_required"
    # Graph refused the account's token for subscriptions even after a fresh token.
    FORBIDDEN = "forbidden"


@dataclass(frozen=True)
class AccountHealth:
    account: str
    state: AccountState
    reason: str
    since: float

    @property
    def healthy(self) -> bool:
        return self.state is AccountState.OK


class ServiceAccounts:
    def __init__(self, redis: aioredis.Redis, box: SecretBox, accounts: Sequence[str]) -> None:
        self.redis = redis
        self.box = box
        self.accounts = tuple(accounts)

    def _password_context(self, account: str) -> str:
        return f"{keys.ACCOUNT_PASSWORDS}/{account.lower()}"

    async def set_password(self, account: str, password: str) -> None:
        sealed = self.box.seal(password.encode(), self._password_context(account))
        await self.redis.hset(keys.ACCOUNT_PASSWORDS, account.lower(), sealed)

    async def password(self, account: str) -> str | None:
        sealed = await self.redis.hget(keys.ACCOUNT_PASSWORDS, account.lower())
        if sealed is None:
            return None
        raw = sealed if isinstance(sealed, bytes) else sealed.encode()
        return self.box.open(raw, self._password_context(account)).decode()

    async def forget_password(self, account: str) -> None:
        await self.redis.hdel(keys.ACCOUNT_PASSWORDS, account.lower())

    async def mark(
        self, account: str, state: AccountState, reason: str = "", now: float | None = None
    ) -> None:
        """Record an account's health; logs and updates the gauge only when the state changes."""
        previous = await self.health_of(account)
        if previous is not None and previous.state is state and previous.reason == reason:
            return
        since = time.time() if now is None else now
        record = {"state": state.value, "reason": reason, "since": since}
        await self.redis.hset(keys.ACCOUNT_STATUS, account.lower(), json.dumps(record))
        metrics.ACCOUNT_HEALTHY.labels(account.lower()).set(1 if state is AccountState.OK else 0)
        if state is AccountState.OK:
            if previous is not None and not previous.healthy:
                log.warning("service account %s works again", account)
        else:
            log.error(
                "ALERT service account %s needs an operator (%s): %s; run `presence-bridge login %s`",
                account,
                state.value,
                reason,
                account,
            )

    async def health_of(self, account: str) -> AccountHealth | None:
        raw = await self.redis.hget(keys.ACCOUNT_STATUS, account.lower())
        if raw is None:
            return None
        data = json.loads(decoded(raw))
        return AccountHealth(
            account.lower(), AccountState(data["state"]), str(data["reason"]), float(data["since"])
        )

    async def health(self) -> dict[str, AccountHealth]:
        """Health of every configured account; one never checked yet counts as OK."""
        found: dict[str, AccountHealth] = {}
        for account in self.accounts:
            known = await self.health_of(account)
            found[account.lower()] = known or AccountHealth(account.lower(), AccountState.OK, "", 0.0)
        return found
