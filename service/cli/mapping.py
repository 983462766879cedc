"""``presence-bridge mapping check|preview``: validate a mapping file, or show what it would change."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from service.bridge.mapping import LANGUAGES, MappingError, format_table, load_mapping
from service.cli.policy import EXIT_OK, EXIT_USAGE
from service.cli.store import load_settings, with_redis

if TYPE_CHECKING:
    import redis.asyncio as aioredis


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file",
        nargs="?",
        type=Path,
        help="mapping TOML file to check; omitted: show the built-in table",
    )
    parser.add_argument(
        "--language",
        choices=LANGUAGES,
        default="de",
        help="built-in table to show when no FILE is given (default: de)",
    )


def run_check(args: argparse.Namespace) -> int:
    """Print the effective table and return 0, or print the problems to stderr and return 2."""
    try:
        mapping = load_mapping(args.file, language=getattr(args, "language", "de"))
    except MappingError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    print(format_table(mapping))
    return EXIT_OK


def run_preview(args: argparse.Namespace) -> int:
    from service.ops.explain import preview

    try:
        table = load_mapping(args.file, language=args.language)
    except MappingError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    settings = load_settings()

    async def job(redis: aioredis.Redis) -> int:
        for line in await preview(redis, table):
            print(line)
        return EXIT_OK

    return with_redis(settings, job)


def run_export(args: argparse.Namespace) -> int:
    from service.bridge.mapping_store import MappingStore, UnknownVersion

    settings = load_settings()

    async def job(redis: aioredis.Redis) -> int:
        store = MappingStore(redis)
        try:
            version = await store.get(args.version) if args.version else await store.current()
        except UnknownVersion as exc:
            print(f"presence-bridge: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if version is None:
            print("presence-bridge: no mapping version is stored yet: start a worker once", file=sys.stderr)
            return EXIT_USAGE
        if args.output is None:
            sys.stdout.write(version.toml)
        else:
            args.output.write_text(version.toml, encoding="utf-8")
            print(f"mapping version {version.number} written to {args.output}", file=sys.stderr)
        return EXIT_OK

    return with_redis(settings, job)
