"""The Teams side of the reconciler: the bridge's own presence session through Graph.

``setPresence`` with ``sessionId`` = our app id creates or refreshes the application session;
its ``expirationDuration`` (5 min to 4 h) is the dead-man switch: a bridge that dies leaves the
user Busy for at most that long.  ``clearPresence`` ends it; 404 means it is already gone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from service.core.circuit import Circuit, probe_http
from service.core.clock import Clock, SystemClock
from service.graph.client import (
    GraphClient,
    GraphError,
    GraphThrottled,
    GraphUnavailable,
    TokenSource,
    with_token,
)
from service.graph.presence import TeamsPresence

MIN_DURATION_SECONDS = 5 * 60
MAX_DURATION_SECONDS = 4 * 3600


class TeamsGateway(Protocol):
    async def set_presence(self, user_id: str, presence: TeamsPresence, duration_seconds: int) -> None: ...

    async def clear_presence(self, user_id: str) -> None: ...


def iso_duration(seconds: int) -> str:
    """``PT5M``-style duration, clamped to what setPresence accepts."""
    seconds = max(MIN_DURATION_SECONDS, min(MAX_DURATION_SECONDS, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return (
        "PT"
        + (f"{hours}H" if hours else "")
        + (f"{minutes}M" if minutes else "")
        + (f"{secs}S" if secs else "")
    )


class GraphTeams:
    def __init__(
        self, client: GraphClient, tokens: TokenSource, app_id: str, *, clock: Clock | None = None
    ) -> None:
        self.client = client
        self.tokens = tokens
        self.app_id = app_id
        self.clock: Clock = clock or SystemClock()
        # Per user: Graph asked us not to come back before this time.  A new event for the user
        # must not call Graph earlier; it gets the same answer without asking.
        self._not_before: dict[str, float] = {}
        # Graph as a whole: after a run of failures every write waits and a probe asks instead.
        self.circuit = Circuit(name="Microsoft Graph")

    def _check_not_before(self, user_id: str, path: str) -> None:
        until = self._not_before.get(user_id)
        if until is None:
            return
        left = until - self.clock.now()
        if left > 0:
            raise GraphThrottled("POST", path, 429, left)
        del self._not_before[user_id]

    async def _send(self, user_id: str, path: str, call: Callable[[str], Awaitable[None]]) -> None:
        self._check_not_before(user_id, path)
        if not self.circuit.allow():
            raise GraphUnavailable("POST", path, 0, "circuit_open", "Graph is not answering; waiting for it")
        try:
            await with_token(self.tokens, call)
        except GraphThrottled as exc:
            self.circuit.succeeded()  # an answer: Graph is up, and asks this user to wait
            self._not_before[user_id] = self.clock.now() + exc.retry_after
            if len(self._not_before) > 100_000:  # bounded: forget the oldest waits
                self._not_before.pop(next(iter(self._not_before)))
            raise
        except GraphUnavailable:
            self.circuit.failed()
            raise
        except GraphError:
            self.circuit.succeeded()  # Graph answered, about this request
            raise
        self.circuit.succeeded()

    async def probe(self) -> bool:
        """Ask Graph whether it answers at all (no token needed: a 401 is an answer)."""
        return await probe_http(self.circuit, self.client.http(), f"{self.client.base_url}/v1.0/")

    async def set_presence(self, user_id: str, presence: TeamsPresence, duration_seconds: int) -> None:
        body = {
            "sessionId": self.app_id,
            "availability": presence.availability,
            "activity": presence.activity,
            "expirationDuration": iso_duration(duration_seconds),
        }
        path = f"/v1.0/users/{user_id}/presence/setPresence"

        async def call(token: str) -> None:
            await self.client.request("POST", path, token=token, body=body)

        await self._send(user_id, path, call)

    async def clear_presence(self, user_id: str) -> None:
        path = f"/v1.0/users/{user_id}/presence/clearPresence"

        async def call(token: str) -> None:
            try:
                await self.client.request("POST", path, token=token, body={"sessionId": self.app_id})
            except GraphError as exc:
                if exc.status != 404:  # no session: what we wanted
                    raise

        await self._send(user_id, path, call)
