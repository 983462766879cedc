"""The systemd service watchdog: ``WATCHDOG=1`` datagrams to ``$NOTIFY_SOCKET``.

Under the unit in deploy/systemd/ (``WatchdogSec=``), systemd restarts the bridge when the event
loop stops sending them, the same judgement the ``health`` probe makes from the heartbeat file
elsewhere.  Without ``NOTIFY_SOCKET`` (any other way of running it) this does nothing.  The
protocol is sd_notify(3): one datagram of ``KEY=VALUE`` lines to a Unix socket, whose name starts
with ``@`` for the abstract namespace.
"""

from __future__ import annotations

import contextlib
import os
import socket


def notify(message: str, environ: dict[str, str] | None = None) -> bool:
    """Send ``message`` to the service manager; False when there is none or it cannot be reached."""
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not address or not address.startswith(("/", "@")):
        return False
    target = "\0" + address[1:] if address.startswith("@") else address
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode("ascii"), target)
        return True
    return False
