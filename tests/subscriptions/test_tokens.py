"""Tokens through MSAL against the Entra sandbox: caches sealed in Redis, device code, alerts."""

from __future__ import annotations

import asyncio
import re

import pytest

from service.core import keys
from subscriptions.accounts import AccountState
from subscriptions.tokens import LoginRequired
from tests.fixtures.subscription_world import SERVICE_PASSWORD, WorldFactory


async def test_password_login_stores_a_sealed_cache_and_serves_tokens(
    subscription_world: WorldFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The machine-wide bundle variable must not override the CA the bridge was configured with.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/nonexistent/ca.pem")
    world = await subscription_world(users=1, accounts=1, login=False)
    [account] = world.accounts
    tokens = world.tokens()
    # Username/password goes through MSAL's userrealm request, which drops the sandbox's port.
    await tokens.login_with_password(account, SERVICE_PASSWORD)
    sealed = await world.redis.hget(keys.TOKEN_CACHES, account)
    assert sealed is not None
    assert b"refresh_token" not in sealed
    assert b"RefreshToken" not in sealed
    password = await world.redis.hget(keys.ACCOUNT_PASSWORDS, account)
    assert password is not None
    assert SERVICE_PASSWORD.encode() not in password
    token = await tokens.delegated_token(account)
    assert token.count(".") == 2
    # A cached token changes nothing in Redis: the cache is written back only when MSAL changed it.
    again = await world.tokens().delegated_token(account)
    assert again == token
    assert await world.redis.hget(keys.TOKEN_CACHES, account) == sealed
    assert token not in caplog.text
    app_token = await tokens.app_token()
    assert app_token != token


async def test_mfa_account_refuses_password_and_becomes_an_alert(subscription_world: WorldFactory) -> None:
    world = await subscription_world(users=1, accounts=1, login=False)
    world.handle.add_service_account("mfa@sandbox.onmicrosoft.com", "Mfa-Passw0rd!", mfa_required=True)
    tokens = world.tokens()
    with pytest.raises(LoginRequired) as caught:
        await tokens.login_with_password("mfa@sandbox.onmicrosoft.com", "Mfa-Passw0rd!")
    assert "Mfa-Passw0rd!" not in str(caught.value)
    health = await tokens.accounts.health_of("mfa@sandbox.onmicrosoft.com")
    assert health is not None
    assert health.state is AccountState.LOGIN_REQUIRED


async def test_device_code_login_then_revoked_refresh_token_is_an_alert(
    subscription_world: WorldFactory,
) -> None:
    world = await subscription_world(users=1, accounts=1, login=False)
    [account] = world.accounts
    tokens = world.tokens()
    messages: list[str] = []

    def show(message: str) -> None:
        messages.append(message)

    login = asyncio.create_task(tokens.login_with_device_code(account, show, wait_seconds=30))
    for _ in range(100):
        if messages:
            break
        await asyncio.sleep(0.05)
    match = re.search(r"enter the code (\S+)", messages[0])
    assert match is not None
    world.handle.control("POST", f"/device-codes/{match.group(1)}/approve", {"user": account})
    await login
    assert (await tokens.delegated_token(account)).count(".") == 2
    # An administrator revokes the account's sessions: refreshing fails and no password is stored.
    world.handle.control("POST", f"/users/{account}/revoke-sessions")
    world.handle.advance(5)
    with pytest.raises(LoginRequired):
        await tokens.delegated_token(account, force_refresh=True)
    health = await tokens.accounts.health_of(account)
    assert health is not None
    assert health.state is AccountState.LOGIN_REQUIRED
    # Another call is a quick, clean refusal again, never a crash.
    with pytest.raises(LoginRequired):
        await tokens.delegated_token(account, force_refresh=True)


async def test_password_account_signs_in_again_after_revocation(subscription_world: WorldFactory) -> None:
    world = await subscription_world(users=1, accounts=1)
    [account] = world.accounts
    tokens = world.tokens()
    before = await tokens.delegated_token(account)
    world.handle.control("POST", f"/users/{account}/revoke-sessions")
    world.handle.advance(5)
    after = await tokens.delegated_token(account, force_refresh=True)
    assert after != before
    health = await tokens.accounts.health_of(account)
    assert health is not None
    assert health.state is AccountState.OK


async def test_concurrent_refreshes_of_one_account_are_serialised(subscription_world: WorldFactory) -> None:
    world = await subscription_world(users=1, accounts=1)
    [account] = world.accounts
    replicas = [world.tokens() for _ in range(3)]
    results = await asyncio.gather(*(t.delegated_token(account, force_refresh=True) for t in replicas))
    assert all(r.count(".") == 2 for r in results)
    assert await world.redis.get(keys.token_cache_lock(account)) is None
