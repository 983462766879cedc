"""Resolving selected users' e-mails to Entra ids: batched, cached, misses reported by address."""

from __future__ import annotations

import json

from service.core import keys
from service.core.settings import USER_MATCH_PROPERTIES
from service.graph.client import BATCH_LIMIT
from subscriptions.users import FILTER_EXPRESSIONS, UserDirectory
from tests.fixtures.subscription_world import WorldFactory


async def test_resolves_ids_and_reports_unknown_addresses(subscription_world: WorldFactory) -> None:
    world = await subscription_world(users=40, accounts=1, login=False)
    quoted = world.handle.sandbox.add_user("Quote User", mail="o'brien@example.test")
    directory = world.scheduler.users
    asked = [*world.emails, "O'Brien@Example.test", "ghost@example.test", " ", "GHOST@example.test"]
    result = await directory.resolve(asked)
    assert result.ids == {**world.user_ids, "o'brien@example.test": quoted.id}
    assert result.missing == ["ghost@example.test"]
    assert result.unresolved == []
    cached = await world.redis.hget(keys.USER_IDS, "ghost@example.test")
    assert cached is not None
    assert json.loads(cached)["id"] is None


async def test_cached_ids_need_no_graph_calls(subscription_world: WorldFactory) -> None:
    world = await subscription_world(users=5, accounts=1, login=False)
    directory = world.scheduler.users
    await directory.resolve(world.emails)
    # A directory that cannot reach Graph any more still answers from the cache.
    world.handle.control("POST", "/faults", {"path": "/v1.0/users", "status": 500, "count": 100})
    again = await directory.resolve(world.emails)
    assert again.ids == world.user_ids


async def test_failed_lookups_are_unresolved_not_missing(subscription_world: WorldFactory) -> None:
    world = await subscription_world(users=3, accounts=1, login=False)
    world.handle.control("POST", "/faults", {"path": "/v1.0/users", "status": 500, "count": 100})
    result = await world.scheduler.users.resolve(world.emails)
    assert result.ids == {}
    assert result.missing == []
    assert sorted(result.unresolved) == sorted(world.emails)
    assert await world.redis.hlen(keys.USER_IDS) == 0


def test_one_batch_covers_a_hundred_addresses_with_three_properties_each() -> None:
    per_request = FILTER_EXPRESSIONS // len(USER_MATCH_PROPERTIES)
    assert per_request * BATCH_LIMIT == 100


async def test_an_address_matches_mail_then_the_upn_then_an_alias(subscription_world: WorldFactory) -> None:
    world = await subscription_world(users=2, accounts=1, login=False)
    sandbox = world.handle.sandbox
    by_mail = sandbox.add_user("Mail User", mail="anna@contoso.test")
    by_upn = sandbox.add_user("Upn User", mail="", user_principal_name="ben@contoso.test")
    by_alias = sandbox.add_user(
        "Alias User",
        mail="carla.conrad@contoso.test",
        proxy_addresses=("SMTP:carla.conrad@contoso.test", "smtp:cc@contoso.test"),
    )
    # Someone whose alias is another person's mail: mail wins, as the order says.
    sandbox.add_user("Other", mail="other@contoso.test", proxy_addresses=("smtp:anna@contoso.test",))
    asked = ["anna@contoso.test", "Ben@Contoso.test", "cc@contoso.test", "nobody@contoso.test"]
    result = await world.scheduler.users.resolve(asked)
    assert result.ids == {
        "anna@contoso.test": by_mail.id,
        "ben@contoso.test": by_upn.id,
        "cc@contoso.test": by_alias.id,
    }
    assert result.missing == ["nobody@contoso.test"]
    mail_only = UserDirectory(
        world.redis, world.scheduler.users.graph, world.scheduler.users.app_token, match_order=["mail"]
    )
    await world.redis.delete(keys.USER_IDS)
    narrow = await mail_only.resolve(asked)
    assert narrow.ids == {"anna@contoso.test": by_mail.id}
