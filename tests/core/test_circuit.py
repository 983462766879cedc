"""The PBX circuit: opens after a run of failures, lets one probe through per period, tells on close."""

from __future__ import annotations

from service.core.circuit import Circuit


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_the_threshold_probes_once_per_period_and_closes_on_an_answer() -> None:
    clock = Clock()
    circuit = Circuit(threshold=3, probe_seconds=2.0, clock=clock)
    closed: list[float] = []
    circuit.on_close.append(lambda: closed.append(clock.now))
    for _ in range(2):
        circuit.failed()
    assert circuit.allow()
    assert not circuit.open
    circuit.failed()
    assert circuit.open
    assert not circuit.allow()  # writes fail at once while open
    clock.now = 2.0
    assert circuit.probe_due()
    assert circuit.allow()  # one probe ...
    assert not circuit.allow()  # ... and no second one in the same period
    circuit.failed()
    clock.now = 4.0
    assert circuit.allow()
    circuit.succeeded()
    assert not circuit.open
    assert closed == [4.0]
    assert circuit.allow()


def test_a_success_between_failures_resets_the_count_and_a_closed_circuit_tells_nobody() -> None:
    circuit = Circuit(threshold=2, clock=Clock())
    told: list[bool] = []
    circuit.on_close.append(lambda: told.append(True))
    circuit.failed()
    circuit.succeeded()
    circuit.failed()
    assert not circuit.open
    assert told == []
