"""``python -m subscriptions``: the subscription scheduler on its own, reading e-mails from a file.

The product runs the scheduler through ``presence-bridge serve --role scheduler`` with the STARFACE
directory as the e-mail source; this entry point serves standalone deployments and the tests that
kill a leader with SIGKILL.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import redis.asyncio as aioredis

from service.settings import Settings, SettingsError
from subscriptions.cli import (
    add_login_arguments,
    add_renew_arguments,
    emails_from_file,
    run_login,
    run_renew,
)
from subscriptions.scheduler import build_scheduler


async def _serve(settings: Settings, emails_file: str, pass_seconds: float) -> int:
    if not settings.redis_url:
        print("error: REDIS_URL is not set", file=sys.stderr)
        return 2
    redis = aioredis.Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=10)
    scheduler = build_scheduler(
        settings, redis, emails_from_file(emails_file), pass_interval_seconds=pass_seconds
    )
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m subscriptions")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("scheduler", help="contend for the lease and keep subscriptions alive")
    serve.add_argument("--emails-file", required=True, help="one e-mail address per line")
    serve.add_argument("--pass-seconds", type=float, default=60.0, help="pause between passes")
    renew = commands.add_parser("renew", help="one full pass, then exit")
    renew.add_argument("--emails-file", required=True, help="one e-mail address per line")
    add_renew_arguments(renew)
    add_login_arguments(commands.add_parser("login", help="sign a service account in"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env(env_file=None)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "scheduler":
        return asyncio.run(_serve(settings, args.emails_file, args.pass_seconds))
    if args.command == "renew":
        return run_renew(args, settings, emails_from_file(args.emails_file))
    return run_login(args, settings)


if __name__ == "__main__":
    sys.exit(main())
