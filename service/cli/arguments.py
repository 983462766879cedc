"""Arguments of the commands whose handlers import heavy libraries (MSAL, aiohttp): kept apart so
that building the parser, for ``--help`` or any other command, imports none of them."""

from __future__ import annotations

import argparse


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
