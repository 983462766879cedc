"""``presence-bridge rotate certificate|secret-key``: replace a key the bridge keeps, losing nothing."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from service.cli.arguments import Subparsers, positive_int
from service.cli.policy import EXIT_FAILURE, EXIT_OK
from service.cli.store import load_settings, with_redis
from service.core.roles import CORE

if TYPE_CHECKING:
    import redis.asyncio as aioredis


def add_parser(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "rotate",
        help="rotate the notification encryption certificate or BRIDGE_SECRET_KEY",
        description="Replace a key the bridge keeps, without losing a notification or a secret.",
    )
    what = parser.add_subparsers(dest="rotate_command", required=True, metavar="WHAT")
    what.add_parser(
        "certificate",
        help="make a new encryption certificate current; subscriptions move to it at the next pass",
        description=(
            "Create a new encryption certificate for Graph's rich notifications and make it current. "
            "The scheduler's next pass moves every subscription to it (PATCH, or recreate where Graph "
            "refuses). The old certificate keeps decrypting notifications until no subscription has "
            "used it for 5 hours (Graph retries deliveries for up to 4), then it is removed."
        ),
    ).set_defaults(handler=run_certificate)
    secret_key = what.add_parser(
        "secret-key",
        help="re-seal every stored secret under the current BRIDGE_SECRET_KEY",
        description=(
            "Re-seal every secret the bridge stores (credentials, token caches, private keys, "
            "callback and clientState secrets) under BRIDGE_SECRET_KEY. First give every process "
            "the new key as BRIDGE_SECRET_KEY and the old one as BRIDGE_SECRET_KEY_PREVIOUS and "
            "restart them; then run this; then remove BRIDGE_SECRET_KEY_PREVIOUS. Safe to run "
            "while the bridge runs and to run again after an interruption. Exit 0 when every "
            "value is under the new key, 1 when some are not (they are named)."
        ),
    )
    secret_key.add_argument(
        "--dry-run", action="store_true", help="count what would be re-sealed, change nothing"
    )
    secret_key.add_argument(
        "--batch-size",
        type=positive_int,
        default=200,
        metavar="N",
        help="values read and rewritten per Redis round trip (default 200)",
    )
    secret_key.set_defaults(handler=run_secret_key)


def run_certificate(args: argparse.Namespace) -> int:
    from service.core.secretbox import SecretBox
    from service.graph.certificates import CertificateStore

    settings = load_settings([CORE])

    async def job(redis: aioredis.Redis) -> int:
        store = CertificateStore(redis, SecretBox.from_settings(settings))
        before = await store.current_id()
        new = await store.rotate()
        kept = [c for c in await store.ids() if c != new.id]
        print(f"encryption certificate {new.id} is current (was {before or 'none'})")
        print(f"kept for notifications in flight: {', '.join(kept) or 'none'}")
        print("the scheduler's next pass moves every subscription to the new certificate")
        return EXIT_OK

    return with_redis(settings, job)


def run_secret_key(args: argparse.Namespace) -> int:
    from service.core.secretbox import SecretBox
    from service.ops.reseal import reseal

    settings = load_settings([CORE])
    box = SecretBox.from_settings(settings)

    async def job(redis: aioredis.Redis) -> int:
        report = await reseal(redis, box, batch_size=args.batch_size, dry_run=args.dry_run)
        verb = "would re-seal" if args.dry_run else "re-sealed"
        print(f"current key id {box.key_id}: {verb} {report.resealed}, already current {report.current}")
        if not args.dry_run and report.raced:
            # A process still on the old key wrote meanwhile; one more pass takes those.
            again = await reseal(redis, box, batch_size=args.batch_size)
            report.resealed += again.resealed
            report.raced, report.unreadable = again.raced, report.unreadable + again.unreadable
            print(f"second pass re-sealed {again.resealed}")
        for context in sorted(set(report.unreadable)):
            print(f"cannot open {context}: add the key that sealed it to BRIDGE_SECRET_KEY_PREVIOUS")
        if report.raced:
            print(
                f"{report.raced} value(s) were rewritten under an old key while this ran: a process "
                "still runs without the new BRIDGE_SECRET_KEY; restart it and run this again"
            )
        if report.unreadable or report.raced:
            return EXIT_FAILURE
        if not args.dry_run:
            print("every stored secret is under the new key: BRIDGE_SECRET_KEY_PREVIOUS may be removed")
        return EXIT_OK

    return with_redis(settings, job)
