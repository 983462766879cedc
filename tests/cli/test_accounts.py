"""``presence-bridge login`` and ``presence-bridge renew``: exit codes and one-line messages."""

from __future__ import annotations

import argparse
import asyncio
import io

from service.cli.accounts import run_login, run_renew
from service.cli.arguments import add_login_arguments, add_renew_arguments
from service.core import keys
from subscriptions.lease import Lease
from subscriptions.users import EmailSource
from tests.fixtures.subscription_world import SERVICE_PASSWORD, World, WorldFactory


def _login_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_login_arguments(parser)
    return parser.parse_args(list(argv))


def _renew_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_renew_arguments(parser)
    return parser.parse_args([])


def _emails(world: World) -> EmailSource:
    async def source() -> list[str]:
        return list(world.emails)

    return source


async def test_login_with_password_from_stdin(subscription_world: WorldFactory) -> None:
    world = await subscription_world(users=1, accounts=1, login=False)
    out, err = io.StringIO(), io.StringIO()
    args = _login_args(world.accounts[0], "--password", "--password-stdin")
    code = await asyncio.to_thread(
        run_login, args, world.settings, out=out, err=err, stdin=io.StringIO(SERVICE_PASSWORD + "\n")
    )
    assert code == 0, err.getvalue()
    assert "signed in" in out.getvalue()
    assert SERVICE_PASSWORD not in out.getvalue() + err.getvalue()
    assert await world.redis.hexists(keys.TOKEN_CACHES, world.accounts[0])


async def test_refused_login_is_one_line_and_exit_1(subscription_world: WorldFactory) -> None:
    world = await subscription_world(users=1, accounts=1, login=False)
    out, err = io.StringIO(), io.StringIO()
    args = _login_args(world.accounts[0], "--password", "--password-stdin")
    code = await asyncio.to_thread(
        run_login, args, world.settings, out=out, err=err, stdin=io.StringIO("wrong-password\n")
    )
    assert code == 1
    assert err.getvalue().count("\n") == 1
    assert err.getvalue().startswith("presence-bridge: ")
    assert "wrong-password" not in err.getvalue()
    assert "Traceback" not in err.getvalue()
    unknown = await asyncio.to_thread(
        run_login, _login_args("nobody@x.test"), world.settings, out=out, err=err
    )
    assert unknown == 2


async def test_renew_does_one_pass_and_names_a_shortfall(subscription_world: WorldFactory) -> None:
    world = await subscription_world(users=1301, accounts=2, pre_resolved=True)
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(run_renew, _renew_args(), world.settings, _emails(world), out=out, err=err)
    assert code == 2
    assert "add 1 more" in err.getvalue()
    assert err.getvalue().count("\n") == 1
    world.emails[:] = world.emails[:1300]
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(run_renew, _renew_args(), world.settings, _emails(world), out=out, err=err)
    assert code == 0, err.getvalue()
    assert "1300 users" in out.getvalue()
    assert len(world.sandbox_subscriptions()) == 2
    # The pass releases its lease, so a serving replica takes over at once.
    assert await world.redis.get(keys.SCHEDULER_LEASE) is None


async def test_renew_does_nothing_while_another_replica_leads(subscription_world: WorldFactory) -> None:
    world = await subscription_world(users=3, accounts=1)
    leader = Lease(world.redis, keys.SCHEDULER_LEASE, 30)
    assert await leader.acquire()
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(run_renew, _renew_args(), world.settings, _emails(world), out=out, err=err)
    assert code == 0
    assert "another replica" in out.getvalue()
    assert world.sandbox_subscriptions() == []
