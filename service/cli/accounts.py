"""Command-line entry points: ``presence-bridge login <account>`` and ``presence-bridge renew``.

Exit codes and messages follow ``service.cli.policy``: one line, no traceback, and never a token
or password in the output.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import TextIO

import redis.asyncio as aioredis

from service.cli.policy import EXIT_FAILURE, EXIT_USAGE, CommandFailed, UsageError, say
from service.core import storage
from service.core.secretbox import SealError, SecretBox
from service.core.settings import Settings
from service.graph.client import GraphError
from subscriptions.accounts import ServiceAccounts
from subscriptions.lease import LeaseLost
from subscriptions.scheduler import build_scheduler
from subscriptions.shards import ShortfallError
from subscriptions.tokens import TokenError, Tokens
from subscriptions.users import EmailSource, Resolution

# Failures with a message fit for an operator; anything else is a bug and may show a traceback.
_EXPECTED: tuple[type[BaseException], ...] = (
    TokenError,
    GraphError,
    ShortfallError,
    LeaseLost,
    SealError,
    aioredis.RedisError,
    OSError,
    ValueError,
)


class CommandError(UsageError):
    """A one-line reason the command cannot do its job as configured (exit 2)."""


def _redis(settings: Settings, redis_url: str | None) -> aioredis.Redis:
    url = redis_url or settings.redis_url
    if not url:
        raise CommandError("REDIS_URL is not set: the command needs the Redis the service uses")
    return storage.connect(url, socket_timeout=10, socket_connect_timeout=10)


def _run(job: Callable[[], Coroutine[None, None, int]], err: TextIO) -> int:
    try:
        return asyncio.run(job())
    except CommandError as exc:
        say(str(exc), err)
        return EXIT_USAGE
    except CommandFailed as exc:
        say(str(exc), err)
        return EXIT_FAILURE
    except _EXPECTED as exc:
        say(str(exc) or type(exc).__name__, err)
    except KeyboardInterrupt:
        say("interrupted", err)
    return EXIT_FAILURE


def run_login(
    args: argparse.Namespace,
    settings: Settings,
    *,
    redis_url: str | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    stdin: TextIO | None = None,
) -> int:
    """Sign a service account in (device code or password) and store its tokens, sealed, in Redis."""
    out = out or sys.stdout
    err = err or sys.stderr
    account = str(args.account).strip()

    async def job() -> int:
        configured = {a.lower() for a in settings.graph_service_accounts}
        if account.lower() not in configured:
            raise CommandError(f"{account} is not listed in GRAPH_SERVICE_ACCOUNTS")
        redis = _redis(settings, redis_url)
        try:
            box = SecretBox.from_settings(settings)
            tokens = Tokens(
                redis,
                box,
                ServiceAccounts(redis, box, settings.graph_service_accounts),
                tenant_id=settings.tenant_id,
                client_id=settings.client_id,
                authority_base_url=settings.authority_base_url,
                extra_ca_file=settings.extra_ca_file,
            )
            if args.password:
                if args.password_stdin:
                    password = (stdin or sys.stdin).readline().rstrip("\r\n")
                else:
                    password = await asyncio.to_thread(getpass.getpass, f"Password for {account}: ")
                if not password:
                    raise CommandError("no password given")
                await tokens.login_with_password(account, password)
            else:

                def show(message: str) -> None:
                    print(message, file=out, flush=True)

                await tokens.login_with_device_code(account, show, wait_seconds=float(args.wait_seconds))
            print(f"{account} signed in; its tokens are stored encrypted in Redis", file=out)
            return 0
        finally:
            await redis.aclose()

    return _run(job, err)


def run_renew(
    args: argparse.Namespace,
    settings: Settings,
    emails: EmailSource,
    *,
    on_resolution: Callable[[Resolution], Awaitable[None]] | None = None,
    redis_url: str | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """One full scheduler pass (for cron), then exit; does nothing while another replica leads."""
    out = out or sys.stdout
    err = err or sys.stderr

    async def job() -> int:
        redis = _redis(settings, redis_url)
        scheduler = build_scheduler(
            settings, redis, emails, lease_seconds=args.lease_seconds, on_resolution=on_resolution
        )
        try:
            report = await scheduler.run_once()
            if not report.leader:
                print("another replica holds the scheduler lease; it keeps the subscriptions", file=out)
                return 0
            await scheduler.lease.release()
            if report.shortfall is not None:
                raise CommandError(str(report.shortfall))
            if report.errors:
                more = f" (and {len(report.errors) - 1} more)" if len(report.errors) > 1 else ""
                raise CommandFailed(f"{report.errors[0]}{more}")
            actions = ", ".join(f"{o.account}: {o.action.value}" for o in report.outcomes) or "no accounts"
            print(f"{report.users} users; {actions}; {report.resynced} presences resynced", file=out)
            return 0
        finally:
            await scheduler.close()
            await redis.aclose()

    return _run(job, err)


def emails_from_file(path: str) -> EmailSource:
    """An e-mail source reading one address per line (``#`` comments), for standalone use."""

    async def read() -> list[str]:
        def load() -> list[str]:
            with open(path, encoding="utf-8") as handle:
                return [ln.strip() for ln in handle if ln.strip() and not ln.startswith("#")]

        return await asyncio.to_thread(load)

    return read


async def serve_scheduler(
    settings: Settings, redis_url: str, emails: EmailSource, pass_seconds: float
) -> int:
    """The subscription scheduler alone (contend for the lease, keep subscriptions) until SIGTERM."""
    redis = _redis(settings, redis_url)
    scheduler = build_scheduler(settings, redis, emails, pass_interval_seconds=pass_seconds)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await scheduler.run_forever(stop)
    finally:
        await scheduler.close()
        await redis.aclose()
    return 0
