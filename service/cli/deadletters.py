"""``presence-bridge dead-letters list|replay|purge``: look at, retry or drop entries that kept failing."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import TYPE_CHECKING

from service.cli.policy import EXIT_OK, UsageError
from service.cli.store import load_settings, with_redis

if TYPE_CHECKING:
    import redis.asyncio as aioredis


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="dead_letters_command", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list",
        help="the newest dead letters with stream, reason and delivery count (never their data)",
        description="Print the newest dead letters: id, stream, reason, deliveries, when it failed.",
    )
    listing.add_argument("--limit", type=int, default=50, help="how many to print (default: 50)")
    listing.add_argument("--json", action="store_true", help="print them as JSON")
    for name, verb, what in (
        (
            "replay",
            "put back on the stream it came from",
            "An entry that fails again returns with its count.",
        ),
        ("purge", "delete", "Deleted entries are gone for good."),
    ):
        action = actions.add_parser(
            name,
            help=f"{verb}: the dead letters named by id, or all with --all",
            description=f"{verb.capitalize()} dead letters. {what}",
        )
        action.add_argument("ids", nargs="*", metavar="ID", help="dead-letter ids, as `list` prints them")
        action.add_argument("--all", action="store_true", help="every dead letter")


def run(args: argparse.Namespace) -> int:
    from service.bridge.deadletters import DeadLetters, UnknownDeadLetter

    command = args.dead_letters_command
    if command != "list" and bool(args.ids) == bool(args.all):
        raise UsageError(f"dead-letters {command}: name dead-letter ids, or give --all (not both)")
    settings = load_settings()

    async def job(redis: aioredis.Redis) -> int:
        store = DeadLetters(redis)
        if command == "list":
            letters = await store.list(limit=max(1, args.limit))
            total = await store.count()
            if args.json:
                print(json.dumps({"total": total, "dead_letters": [d.summary() for d in letters]}, indent=2))
                return EXIT_OK
            print(f"{total} dead letter(s)" + (f", newest {len(letters)}:" if letters else ""))
            for letter in letters:
                when = dt.datetime.fromtimestamp(letter.failed_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
                summary = letter.summary()
                print(f"  {letter.id}  {summary['stream']}  {letter.deliveries}x  {when}  {letter.reason}")
            return EXIT_OK
        act = store.replay if command == "replay" else store.purge
        if args.all:
            done = await (store.replay_all() if command == "replay" else store.purge_all())
            print(f"{command}: {done} dead letter(s)")
            return EXIT_OK
        missing = []
        for dead_id in args.ids:
            try:
                await act(dead_id)
            except UnknownDeadLetter:
                missing.append(dead_id)
        print(f"{command}: {len(args.ids) - len(missing)} dead letter(s)")
        if missing:
            raise UsageError(f"no dead letter with id {', '.join(missing)} (see `dead-letters list`)")
        return EXIT_OK

    return with_redis(settings, job)
