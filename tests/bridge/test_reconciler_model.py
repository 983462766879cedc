"""Random interleavings against a small reference model of the whole bridge.

Teams changes, STARFACE calls, duplicated and reordered notifications, STARFACE and Graph
outages, time passing and process restarts, in any order.  After everything settles, STARFACE
must show the mapping of the user's own Teams state as far as Graph let the bridge see it, and
Teams must show the call presence exactly while a STARFACE call is connected.  At every step: no
write to STARFACE was ever caused by the bridge's own Teams session (no echo loop).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any, ClassVar

import redis.asyncio as aioredis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from service.bridge.mapping import default_mapping
from service.core.settings import Settings
from service.graph.presence import BUSY_IN_A_CALL, TeamsPresence
from tests.bridge.harness import FakeClock, Harness, aggregate

USER, LOGIN = "dddd0000-0000-4000-8000-000000000004", "0004"
MAPPING = default_mapping("de")
# The user's own states never include a Teams call, so a "call" row written to STARFACE can
# only come from the bridge's own session: that is the echo the test hunts for.
OWN_STATES = [
    TeamsPresence("Available", "Available"),
    TeamsPresence("Away", "Away"),
    TeamsPresence("BeRightBack", "BeRightBack"),
    TeamsPresence("Busy", "InAMeeting"),
    TeamsPresence("DoNotDisturb", "DoNotDisturb"),
    TeamsPresence("DoNotDisturb", "Presenting"),
    TeamsPresence("Offline", "OffWork"),
    TeamsPresence("Available", "OutOfOffice"),
]


def row(presence: TeamsPresence) -> tuple[bool, str]:
    found = MAPPING.base.lookup(presence.availability, presence.activity).row
    return found.dnd, found.text


class BridgeMachine(RuleBasedStateMachine):
    redis_url: ClassVar[str] = ""
    make_settings: ClassVar[Callable[..., Settings]]

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        self.redis = aioredis.Redis.from_url(self.redis_url)
        self.run(self.redis.flushall())
        self.h = Harness(self.redis, self.make_settings(WORKER_CLAIM_IDLE_MS=1), self.clock)
        self.run(self.h.link(USER, LOGIN))
        self.h.graph.set_own(USER, OWN_STATES[0])
        self.h.graph.publish(USER)
        self.own_history = {OWN_STATES[0]}
        # The user's own state as Graph last showed it (not hidden under the bridge's session).
        self.visible_own = OWN_STATES[0]
        self.calls: dict[str, str] = {}
        self.next_call = 0

    def run(self, work: Any) -> Any:
        return self.loop.run_until_complete(work)

    def _track_visibility(self) -> None:
        own = self.h.graph.own[USER]
        if aggregate(own, self.h.graph.sessions.get(USER)) == own:
            self.visible_own = own

    @rule(presence=st.sampled_from(OWN_STATES))
    def teams_changes(self, presence: TeamsPresence) -> None:
        self.h.graph.set_own(USER, presence)
        self.own_history.add(presence)
        self._track_visibility()

    @rule()
    def call_rings(self) -> None:
        self.next_call += 1
        call_id = f"call-{self.next_call}"
        self.calls[call_id] = "RINGING"
        self.run(self.h.call_event(LOGIN, call_id, "RINGING"))

    @precondition(lambda self: any(s == "RINGING" for s in self.calls.values()))
    @rule(data=st.data())
    def call_connects(self, data: st.DataObject) -> None:
        call_id = data.draw(st.sampled_from(sorted(c for c, s in self.calls.items() if s == "RINGING")))
        self.calls[call_id] = "CONNECTED"
        self.run(self.h.call_event(LOGIN, call_id, "CONNECTED"))

    @precondition(lambda self: bool(self.calls))
    @rule(data=st.data())
    def call_hangs_up(self, data: st.DataObject) -> None:
        call_id = data.draw(st.sampled_from(sorted(self.calls)))
        del self.calls[call_id]
        self.run(self.h.call_event(LOGIN, call_id, "HANGUP"))

    @rule(seed=st.integers(), duplicate=st.booleans())
    def graph_delivers(self, seed: int, duplicate: bool) -> None:
        batch = list(self.h.graph.outbox)
        self.h.graph.outbox = []
        if duplicate:
            batch += batch[: len(batch) // 2 + 1]
        random.Random(seed).shuffle(batch)
        self.run(self.h.deliver(batch))

    @rule()
    def bridge_works(self) -> None:
        self.run(self.h.process())
        self._track_visibility()

    @rule(seconds=st.sampled_from([1, 4, 6, 90, 200, 400]))
    def time_passes(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @rule()
    def starface_outage_toggles(self) -> None:
        self.h.starface.down = not self.h.starface.down

    @rule()
    def graph_outage_toggles(self) -> None:
        self.h.graph.down = not self.h.graph.down

    @rule()
    def bridge_restarts(self) -> None:
        self.h.restart()

    @invariant()
    def no_echo_ever_reaches_starface(self) -> None:
        allowed = {row(p) for p in self.own_history}
        allowed_dnd = {d for d, _ in allowed}
        allowed_text = {t for _, t in allowed}
        for login, what, value in self.h.starface.writes:
            assert login == LOGIN
            assert value in (allowed_dnd if what == "dnd" else allowed_text), (what, value, self.own_history)

    def teardown(self) -> None:
        try:
            self.h.starface.down = False
            self.h.graph.down = False
            for _ in range(4):
                self.run(self.h.pump())
                self._track_visibility()
                self.clock.advance(400)
            self.run(self.h.pump())
            connected = any(s == "CONNECTED" for s in self.calls.values())
            assert (self.h.graph.sessions.get(USER) == BUSY_IN_A_CALL) is connected
            assert (USER in self.h.graph.sessions) is connected
            expected = row(self.visible_own) if connected else row(self.h.graph.own[USER])
            assert self.h.starface.state[LOGIN] == expected
        finally:
            self.run(self.redis.aclose())
            self.loop.close()


def test_bridge_matches_the_model(redis_url: str, make_settings: Callable[..., Settings]) -> None:
    BridgeMachine.redis_url = redis_url
    BridgeMachine.make_settings = staticmethod(make_settings)
    run_state_machine_as_test(
        BridgeMachine,
        settings=settings(
            max_examples=150,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )
