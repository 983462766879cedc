"""Recording gateways for the reconciler's two edges, and a small model of Graph's aggregation.

These stand in only at the reconciler's edges (the STARFACE gateway and the Teams gateway); the
reconciler, the worker, the streams and Redis are the real ones.  End-to-end tests against both
sandboxes over real sockets live in tests/bridge/test_end_to_end.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from service.core import keys
from service.core.partitions import Partitions
from service.graph.presence import PresenceChange, TeamsPresence
from service.starface.gateway import StarfaceUnavailable, UserState

# Graph's aggregation among sessions (docs/protocols.md, "setPresence and clearPresence").
RANK = {
    "DoNotDisturb": 3,
    "Busy": 2,
    "BusyIdle": 2,
    "Available": 1,
    "AvailableIdle": 1,
    "Away": 0,
    "BeRightBack": 0,
}


def aggregate(own: TeamsPresence, session: TeamsPresence | None) -> TeamsPresence:
    """The user's own state against the bridge's session: the higher rank wins, a tie keeps own.

    An offline user with a bridge session shows the session (the session is their only one).
    """
    if session is None:
        return own
    if own.availability == "Offline":
        return session
    return session if RANK.get(session.availability, -1) > RANK.get(own.availability, -1) else own


@dataclass
class RecordingStarface:
    """A STARFACE edge that keeps per-login DND and text, every write, and can be 'down'."""

    state: dict[str, tuple[bool | None, str | None]] = field(default_factory=dict)
    writes: list[tuple[str, str, object]] = field(default_factory=list)
    down: bool = False

    def _check(self) -> None:
        if self.down:
            raise StarfaceUnavailable("connection refused (test outage)")

    async def set_dnd(self, login: str, enabled: bool) -> None:
        self._check()
        _, text = self.state.get(login, (None, None))
        self.state[login] = (enabled, text)
        self.writes.append((login, "dnd", enabled))

    async def set_status_text(self, login: str, text: str) -> None:
        self._check()
        dnd, _ = self.state.get(login, (None, None))
        self.state[login] = (dnd, text)
        self.writes.append((login, "text", text))

    async def read_state(self, login: str) -> UserState:
        self._check()
        dnd, text = self.state.get(login, (None, None))
        return UserState(login, dnd, text)


class GraphDown(Exception):
    pass


@dataclass
class ModelGraph:
    """The Teams edge plus Graph's aggregation: a session change yields a notification."""

    own: dict[str, TeamsPresence] = field(default_factory=dict)
    sessions: dict[str, TeamsPresence] = field(default_factory=dict)
    outbox: list[PresenceChange] = field(default_factory=list)
    sequence: int = 0
    down: bool = False
    clock: Callable[[], float] = lambda: 0.0
    calls: list[tuple[str, str]] = field(default_factory=list)

    def observed(self, user_id: str) -> TeamsPresence:
        return aggregate(
            self.own.get(user_id, TeamsPresence("Available", "Available")), self.sessions.get(user_id)
        )

    def publish(self, user_id: str) -> None:
        """Emit the current aggregate, as a resync read or the first notification would."""
        now = self.observed(user_id)
        self.sequence += 1
        self.outbox.append(
            PresenceChange(
                user_id,
                now.availability,
                now.activity,
                sequence=f"{self.sequence:020d}",
                received_at=self.clock(),
            )
        )

    def _emit(self, user_id: str, before: TeamsPresence) -> None:
        # Graph notifies only when the aggregated presence changes.
        if self.observed(user_id) != before:
            self.publish(user_id)

    def set_own(self, user_id: str, presence: TeamsPresence) -> None:
        before = self.observed(user_id)
        self.own[user_id] = presence
        self._emit(user_id, before)

    async def set_presence(self, user_id: str, presence: TeamsPresence, duration_seconds: int) -> None:
        if self.down:
            raise GraphDown("Graph unreachable (test outage)")
        before = self.observed(user_id)
        self.sessions[user_id] = presence
        self.calls.append((user_id, f"set {presence}"))
        self._emit(user_id, before)

    async def clear_presence(self, user_id: str) -> None:
        if self.down:
            raise GraphDown("Graph unreachable (test outage)")
        before = self.observed(user_id)
        self.sessions.pop(user_id, None)
        self.calls.append((user_id, "clear"))
        self._emit(user_id, before)


@dataclass
class FakeClock:
    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Harness:
    """The real pipeline between the edges: presence stream -> worker -> reconciler, and the
    call stream -> reconciler, all on a real Valkey; ``pump`` drains everything (burst mode)."""

    def __init__(
        self,
        redis: Any,
        settings: Any,
        clock: FakeClock,
        mapping: Any = None,
        partitions: int = 1,
        **options: Any,
    ) -> None:
        from service.bridge.mapping import default_mapping

        self.redis = redis
        self.settings = settings
        self.clock = clock
        self.starface = RecordingStarface()
        self.graph = ModelGraph(clock=clock)
        self.mapping = mapping or default_mapping("de")
        self.options = options
        self.partitions = Partitions(partitions)
        self._call_seq = 0
        self.restart()

    def restart(self) -> None:
        """A new reconciler and worker process: only Redis and the outside systems survive."""
        from service.bridge.reconciler import Reconciler
        from service.bridge.streams import PartitionedConsumer
        from service.bridge.worker import PresenceWorker

        self.reconciler = Reconciler(
            self.redis,
            mapping=self.mapping,
            starface=self.starface,
            teams=self.graph,
            partitions=self.partitions,
            clock=self.clock,
            **self.options,
        )
        self.worker = PresenceWorker(
            self.redis, self.settings, self.partitions, block_ms=5, listeners=[self.reconciler.on_presence]
        )
        self.calls = PartitionedConsumer(
            self.redis,
            self.partitions.call_streams(),
            keys.CALL_GROUP,
            self.reconciler.handle_calls,
            block_ms=5,
            claim_idle_ms=1,
        )

    async def link(self, user_id: str, login: str) -> None:
        from service.bridge.identity import IdentityStore

        store = IdentityStore(self.redis)
        links = await store.all()
        links[user_id] = login
        await store.replace(links)

    async def call_event(self, login: str, call_id: str, state: str) -> None:
        from service.starface.calls import CallEvent

        self._call_seq += 1
        event = CallEvent(
            login=login, call_id=call_id, state=state, time=self.clock(), received_at=self.clock()
        )
        await self.redis.xadd(self.partitions.call_stream(login), event.to_fields())

    async def deliver(self, changes: list[PresenceChange] | None = None) -> None:
        from service.bridge.streams import append_presence_batch

        batch = self.graph.outbox if changes is None else changes
        if batch:
            await append_presence_batch(self.redis, self.partitions, list(batch), 1_000_000)
        if changes is None:
            self.graph.outbox = []

    async def process(self) -> None:
        """One round of every consumer, without delivering Graph's outbox."""
        await self.worker.consumer.ensure_group()
        await self.calls.ensure_group()
        await self.worker.consumer.drain()
        await self.calls.drain()
        await self.reconciler.drain()

    async def pump(self, rounds: int = 6) -> None:
        for _ in range(rounds):
            await self.deliver()
            await self.process()
