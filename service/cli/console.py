"""``presence-bridge console hash-password``: the break-glass account's hash for the settings."""

from __future__ import annotations

import argparse
import getpass
import sys

from service.cli.policy import EXIT_OK, EXIT_USAGE


def run_hash_password(args: argparse.Namespace) -> int:
    from service.core.passwords import hash_password

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Break-glass password: ")
        if getpass.getpass("Again: ") != password:
            print("presence-bridge: the two passwords differ; nothing printed", file=sys.stderr)
            return EXIT_USAGE
    if len(password) < 12:
        print("presence-bridge: use at least 12 characters for the break-glass password", file=sys.stderr)
        return EXIT_USAGE
    print(hash_password(password))
    return EXIT_OK
