"""Liveness written by the event loop itself, for exec probes (``presence-bridge health``).

A probe that asks an HTTP server on a thread says nothing about the event loop: the thread keeps
answering while the loop is stuck.  So each role's loop rewrites a small file every few seconds,
and the probe, a separate process on the same host or in the same container, judges its age.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from service.core import watchdog

DEFAULT_DIR = Path(tempfile.gettempdir()) / "presence-bridge"
PERIOD_SECONDS = 5.0
# A probe calls a role dead after this long without a beat: several missed periods, so that one
# slow moment (a large batch, a garbage collection) is not a restart.
MAX_AGE_SECONDS = 30.0
ROLES = ("web", "worker", "scheduler")
# Workers also beat in Redis (keys.LIVE_WORKERS), so that any process can tell how many are alive.
WORKER_PERIOD_SECONDS = 10.0
WORKER_ALIVE_SECONDS = 3 * WORKER_PERIOD_SECONDS


def path_for(directory: Path, role: str) -> Path:
    return directory / f"heartbeat.{role}"


def beat(directory: Path, roles: Iterable[str], now: float | None = None) -> None:
    """Write each role's file atomically (a probe never reads half a line)."""
    now = time.time() if now is None else now
    directory.mkdir(parents=True, exist_ok=True)
    for role in roles:
        target = path_for(directory, role)
        scratch = target.with_name(f".{target.name}.{os.getpid()}")
        scratch.write_text(f"{now:.3f} {os.getpid()}\n", encoding="ascii")
        os.replace(scratch, target)


async def run(
    directory: Path, roles: Iterable[str], stop: asyncio.Event, period: float = PERIOD_SECONDS
) -> None:
    roles = tuple(roles)
    while not stop.is_set():
        with contextlib.suppress(OSError):  # a full disk must not stop the bridge; the probe will say
            beat(directory, roles)
        watchdog.notify("WATCHDOG=1")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=period)
    for role in roles:  # a clean stop is not a stuck loop: leave no beat behind to be misread
        with contextlib.suppress(OSError):
            path_for(directory, role).unlink()


@dataclass(frozen=True)
class Reading:
    role: str
    at: float | None
    pid: int | None

    def age(self, now: float) -> float | None:
        return None if self.at is None else max(0.0, now - self.at)


def read(directory: Path, role: str) -> Reading:
    try:
        stamp, pid = path_for(directory, role).read_text(encoding="ascii").split()
        return Reading(role, float(stamp), int(pid))
    except (OSError, ValueError):
        return Reading(role, None, None)
