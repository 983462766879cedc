"""Faults played against the whole bridge between both sandboxes, each measured the same way.

A scenario starts a fresh world (embedded Valkey with its append-only file, both sandboxes, the
bridge), offers a burst of Teams changes or STARFACE calls, breaks one part while they flow,
repairs it, and measures: changes offered, users wrong at the end, seconds from the repair until
every user shows what they should, and dead letters.  ``tests/chaos/run.py`` prints the table for
every scenario; ``tests/chaos/test_core_rows.py`` runs the core rows briefly in CI.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from service.core import keys
from service.core.settings import FIELDS
from service.sandbox.demo import DemoWorld, Person

# Teams state -> what STARFACE must show, from the default German table.
BUSY = ("Busy", "InACall", True, "Im Gespräch")
FREE = ("Available", "Available", False, "Verfügbar")


@dataclass
class Row:
    scenario: str
    offered: int
    wrong: int
    converged_seconds: float | None
    dead_letters: int

    def cells(self) -> list[str]:
        took = "never" if self.converged_seconds is None else f"{self.converged_seconds:.1f}"
        return [self.scenario, str(self.offered), str(self.wrong), took, str(self.dead_letters)]


Fault = Callable[[DemoWorld], Awaitable[Callable[[], Awaitable[None]]]]


async def _starface_down(world: DemoWorld, mode: str) -> Callable[[], Awaitable[None]]:
    await world.starface_control("PUT", "/control/faults", {"down": mode})

    async def repair() -> None:
        await world.starface_control("PUT", "/control/faults", {"down": "none"})

    return repair


async def starface_refuses(world: DemoWorld) -> Callable[[], Awaitable[None]]:
    return await _starface_down(world, "refuse")


async def starface_503(world: DemoWorld) -> Callable[[], Awaitable[None]]:
    return await _starface_down(world, "503")


async def starface_500(world: DemoWorld) -> Callable[[], Awaitable[None]]:
    await world.starface_control("PUT", "/control/faults", {"errors": 1_000_000})

    async def repair() -> None:
        await world.starface_control("PUT", "/control/faults", {"errors": 0})

    return repair


async def starface_slow(world: DemoWorld) -> Callable[[], Awaitable[None]]:
    await world.starface_control("PUT", "/control/faults", {"slowSeconds": 3})

    async def repair() -> None:
        await world.starface_control("PUT", "/control/faults", {"slowSeconds": 0})

    return repair


async def starface_drops_sessions(world: DemoWorld) -> Callable[[], Awaitable[None]]:
    await asyncio.sleep(0.5)  # some changes are on their way
    for person in world.people:
        await world.starface_control("DELETE", f"/control/users/{person.login}/session")

    async def repair() -> None:
        return None

    return repair


async def valkey_restart(world: DemoWorld) -> Callable[[], Awaitable[None]]:
    valkey = world._valkey
    assert valkey is not None, "the world must run its own Valkey"
    await asyncio.sleep(0.2)
    valkey.stop(kill=True)  # kill -9: only the append-only file survives

    async def repair() -> None:
        valkey.start()

    return repair


async def _converge(
    wrong: Callable[[], Awaitable[list[Person]]], since: float, settle: float
) -> tuple[float | None, int]:
    """Seconds from ``since`` until nobody is ``wrong`` (None if not within ``settle``), and how
    many are wrong at the end."""
    while time.monotonic() - since < settle:
        if not await wrong():
            return time.monotonic() - since, 0
        await asyncio.sleep(0.2)
    return None, len(await wrong())


def stop_processes(*processes: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM each process still running, SIGKILL what has not stopped 15 s later."""
    for process in processes:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


async def _wrong(world: DemoWorld, expected: dict[str, tuple[bool, str]]) -> list[Person]:
    wrong = []
    for person in world.people:
        if await world.starface_state(person) != expected[person.login]:
            wrong.append(person)
    return wrong


async def teams_burst(
    name: str, fault: Fault, state_dir: Path, *, fault_seconds: float, rounds: int = 5, settle: float = 60
) -> Row:
    """Everybody's Teams state flips ``rounds`` times while ``fault`` lasts ``fault_seconds``.

    An odd number of rounds ends Busy, unlike the start, so a change lost in the fault shows."""
    world = DemoWorld(state_dir, users=5)
    await world.start()
    try:
        await world.ready()
        repair = await fault(world)
        offered = 0
        final = FREE
        for round_ in range(rounds):
            final = BUSY if round_ % 2 == 0 else FREE
            for person in world.people:
                await world.set_teams(person, final[0], final[1])
                offered += 1
            await asyncio.sleep(fault_seconds / rounds)
        await repair()
        repaired = time.monotonic()
        expected = {p.login: (final[2], final[3]) for p in world.people}
        converged, wrong = await _converge(lambda: _wrong(world, expected), repaired, settle)
        dead = int(await world._redis.xlen(keys.DEAD_LETTER_STREAM))
        return Row(name, offered, wrong, converged, dead)
    finally:
        await world.close()


async def graph_503(world: DemoWorld) -> Callable[[], Awaitable[None]]:
    fault = {"method": "POST", "path": "/v1.0/users/*/presence/*", "status": 503, "count": 1_000_000}
    await world.graph_control("POST", "/faults", fault)

    async def repair() -> None:
        await world.graph_control("DELETE", "/faults")

    return repair


async def graph_429(world: DemoWorld) -> Callable[[], Awaitable[None]]:
    fault = {
        "method": "POST",
        "path": "/v1.0/users/*/presence/*",
        "status": 429,
        "retryAfter": 20,
        "count": 1_000_000,
    }
    await world.graph_control("POST", "/faults", fault)

    async def repair() -> None:
        await world.graph_control("DELETE", "/faults")

    return repair


async def calls_burst(
    name: str, fault: Fault, state_dir: Path, *, fault_seconds: float, settle: float = 60
) -> Row:
    """Everybody answers a STARFACE call while ``fault`` lasts; Teams must show them Busy after."""
    world = DemoWorld(state_dir, users=5)
    await world.start()
    try:
        await world.ready()
        repair = await fault(world)
        for person in world.people:
            await world.answer(await world.place_call(person))
        await asyncio.sleep(fault_seconds)
        await repair()
        repaired = time.monotonic()

        async def not_busy() -> list[Person]:
            return [p for p in world.people if await world.teams_presence(p) != "Busy/InACall"]

        converged, wrong = await _converge(not_busy, repaired, settle)
        dead = int(await world._redis.xlen(keys.DEAD_LETTER_STREAM))
        return Row(name, len(world.people), wrong, converged, dead)
    finally:
        await world.close()


def bridge_process(world: DemoWorld, role: str) -> subprocess.Popen[bytes]:
    """``serve --role ROLE`` as a process of its own, on the world's settings."""
    env = {k: v for k, v in os.environ.items() if k not in {f.env for f in FIELDS}}
    env.update(world.environment())
    return subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--role", role],
        env=env,
        cwd=world.state_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def worker_killed(state_dir: Path, *, settle: float = 60) -> Row:
    """kill -9 of the only worker process in the middle of a burst; a new one starts."""
    world = DemoWorld(state_dir, users=5, roles=("web", "scheduler", "worker"))
    await world.start()
    first = second = None
    try:
        await world.ready()
        await world.runtimes.pop().close()  # the work goes to a worker process
        first = bridge_process(world, "worker")
        await asyncio.sleep(2.0)
        offered = 0
        for person in world.people:
            await world.set_teams(person, *BUSY[:2])
            offered += 1
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        for final in (FREE, BUSY):  # ends unlike the start, so a lost change would show
            for person in world.people:
                await world.set_teams(person, *final[:2])
                offered += 1
        second = bridge_process(world, "worker")
        started = time.monotonic()
        expected = {p.login: (BUSY[2], BUSY[3]) for p in world.people}
        converged, wrong = await _converge(lambda: _wrong(world, expected), started, settle)
        dead = int(await world._redis.xlen(keys.DEAD_LETTER_STREAM))
        return Row("kill -9 worker mid-burst", offered, wrong, converged, dead)
    finally:
        stop_processes(first, second)
        await world.close()


def calls_scenarios(fault_seconds: float) -> list[tuple[str, Fault, float]]:
    return [
        (f"Graph answers 503 to presence writes {fault_seconds:.0f} s", graph_503, fault_seconds),
        ("Graph answers 429, Retry-After 20 s, for 30 s", graph_429, 30.0),
    ]


def teams_scenarios(fault_seconds: float) -> list[tuple[str, Fault, float]]:
    return [
        (f"STARFACE refuses connections {fault_seconds:.0f} s", starface_refuses, fault_seconds),
        (f"STARFACE answers 503 {fault_seconds:.0f} s", starface_503, fault_seconds),
        (f"STARFACE answers 500 {fault_seconds:.0f} s", starface_500, fault_seconds),
        (f"STARFACE answers after 3 s for {fault_seconds:.0f} s", starface_slow, fault_seconds),
        ("STARFACE drops every UCI session", starface_drops_sessions, 2.0),
        ("Valkey killed -9, restarted on its AOF", valkey_restart, 2.0),
    ]
