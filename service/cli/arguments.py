"""Arguments of the commands whose handlers import heavy libraries (MSAL, aiohttp): kept apart so
that building the parser, for ``--help`` or any other command, imports none of them."""

from __future__ import annotations

import argparse
from typing import TypeAlias

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def positive_int(text: str) -> int:
    """An argparse type: a whole number above zero, refused with a message that says so."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be above zero")
    return number


def add_login_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("account", help="service account (UPN) listed in GRAPH_SERVICE_ACCOUNTS")
    method = parser.add_mutually_exclusive_group()
    method.add_argument(
        "--device-code",
        action="store_true",
        help="sign in with a device code (default; works with MFA): prints a code and waits",
    )
    method.add_argument(
        "--password",
        action="store_true",
        help="sign in with username and password (no MFA); the password is prompted for and kept encrypted",
    )
    parser.add_argument(
        "--password-stdin", action="store_true", help="with --password: read the password from standard input"
    )
    parser.add_argument(
        "--wait-seconds",
        type=float,
        default=900.0,
        help="how long to wait for the device code to be approved",
    )


def add_renew_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lease-seconds",
        type=float,
        default=None,
        help="lease TTL for this pass (default SCHEDULER_LEASE_SECONDS)",
    )


def add_credentials_arguments(parser: argparse.ArgumentParser) -> None:
    """Subcommands of ``starface credentials``."""
    sub = parser.add_subparsers(dest="credentials_command", required=True, metavar="COMMAND")
    imp = sub.add_parser("import", help="import login,password rows from a CSV file (all or nothing)")
    imp.add_argument("file", help="CSV file with the header login,password")
    one = sub.add_parser("set", help="set the password of one login (asked without echo)")
    one.add_argument("login", help="STARFACE login ID")
    one.add_argument(
        "--password-stdin", action="store_true", help="read the password from the first line of stdin"
    )
    sub.add_parser("list", help="list the login IDs that have stored credentials (never passwords)")
    rm = sub.add_parser("delete", help="delete the stored credentials of one login")
    rm.add_argument("login", help="STARFACE login ID")
