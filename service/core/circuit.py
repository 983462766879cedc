"""A remote service as one circuit: an outage is the service's, not each user's.

Used for the STARFACE PBX and for Microsoft Graph.  When the service stops answering, every
user's write fails for the same reason.  Per-user backoff
would grow to minutes during a long outage, and the users would come back one by one long after
the PBX did.  Instead, after ``threshold`` unavailable answers in a row the circuit opens: writes
fail at once without touching the network, and a probe asks the service every ``probe_seconds``.  The
first answer (a probe or a write) closes it, and everyone who waited is told at once, so the whole
backlog converges within one reconcile period (paced by the reconciler's concurrency).

Per-user faults (a refused password, a dropped session, a Graph 404) are answers from a live
service: they close the circuit too, and keep their own per-user handling.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import aiohttp

log = logging.getLogger(__name__)

CLOSED = "closed"
OPEN = "open"


class Circuit:
    def __init__(
        self,
        *,
        threshold: int = 5,
        probe_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        name: str = "STARFACE",
    ) -> None:
        self.name = name
        self.threshold = threshold
        self.probe_seconds = probe_seconds
        self.clock = clock
        self.state = CLOSED
        self.failures = 0
        self.opened_at: float | None = None
        self._next_probe = 0.0
        # Called (synchronously, on the event loop) when the PBX answers again after an outage.
        self.on_close: list[Callable[[], None]] = []

    @property
    def open(self) -> bool:
        return self.state == OPEN

    def allow(self) -> bool:
        """Whether a call may go to the PBX now: always when closed, one per probe period when open."""
        if self.state == CLOSED:
            return True
        now = self.clock()
        if now >= self._next_probe:
            self._next_probe = now + self.probe_seconds
            return True
        return False

    def probe_due(self) -> bool:
        return self.state == OPEN and self.clock() >= self._next_probe

    def succeeded(self) -> None:
        self.failures = 0
        if self.state == OPEN:
            down = self.clock() - (self.opened_at or self.clock())
            self.state, self.opened_at = CLOSED, None
            log.warning("%s answers again after %.0f s: every waiting user is due now", self.name, down)
            for listener in list(self.on_close):
                listener()

    def failed(self) -> None:
        self.failures += 1
        if self.state == CLOSED and self.failures >= self.threshold:
            self.state = OPEN
            self.opened_at = self.clock()
            self._next_probe = self.opened_at + self.probe_seconds
            log.warning(
                "%s unavailable %d times in a row: writes wait, probing every %.0f s",
                self.name,
                self.failures,
                self.probe_seconds,
            )


async def probe_http(circuit: Circuit, http: aiohttp.ClientSession, url: str) -> bool:
    """Ask ``url`` whether the service answers at all: any HTTP status below 500 closes the circuit
    (no credentials needed, a 401 is an answer); none, or a 5xx, keeps it open."""
    if not circuit.allow():
        return False
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
            up = response.status < 500
    except (aiohttp.ClientError, TimeoutError, OSError):
        up = False
    if up:
        circuit.succeeded()
    else:
        circuit.failed()
    return up
