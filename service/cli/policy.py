"""One exit and error policy for every ``presence-bridge`` command.

0: done, or (``status``) all is well.  1: a run-time failure, or something needs an operator.
2: bad usage or bad configuration; the message says what to fix.  Every message is one line on
stderr, prefixed ``presence-bridge:``, and never a traceback for an error we know.
"""

from __future__ import annotations

import sys
from typing import TextIO

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

PREFIX = "presence-bridge: "


class UsageError(Exception):
    """The operator asked for something that cannot be done as asked (exit 2)."""


class CommandFailed(Exception):
    """The command was right but failed at run time (exit 1)."""


def say(message: str, err: TextIO | None = None) -> None:
    """Print one line of ``message`` (its first line only) with the command's prefix."""
    first = str(message).splitlines()[0] if str(message) else "failed"
    print(f"{PREFIX}{first}", file=err or sys.stderr)


def exit_code(exc: BaseException, err: TextIO | None = None) -> int:
    """Report a known error and give its exit code; other exceptions are not ours to hide."""
    if isinstance(exc, UsageError):
        say(str(exc), err)
        return EXIT_USAGE
    if isinstance(exc, CommandFailed):
        say(str(exc), err)
        return EXIT_FAILURE
    raise exc
