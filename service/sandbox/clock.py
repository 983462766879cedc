"""A controllable clock: wall time plus an offset that can be advanced, running at a speed factor.

Sandboxes and tests must not wait for real minutes (subscription expiry, idle timeouts, delivery
backoff).  Everything that reasons about time asks this clock instead of ``time.time()``; a test
jumps forward with ``advance`` and compresses waits with ``speed``.  Virtual time never goes back.

Thread-safe: a sandbox runs its event loop in a background thread while a test advances the clock
from another, so waiters are woken through their own loop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from collections.abc import Callable


class Clock:
    """``now()`` = virtual epoch seconds; elapsed real time counts ``speed`` times over."""

    def __init__(self, *, speed: float = 1.0, source: Callable[[], float] = time.time) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self._source = source
        self._lock = threading.Lock()
        self._anchor_real = source()
        self._anchor_virtual = self._anchor_real
        self._speed = speed
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def now(self) -> float:
        with self._lock:
            return self._virtual(self._source())

    def utcnow(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.now(), dt.UTC)

    @property
    def speed(self) -> float:
        return self._speed

    @property
    def offset(self) -> float:
        """How far virtual time is ahead of wall time, in seconds."""
        with self._lock:
            real = self._source()
            return self._virtual(real) - real

    def advance(self, seconds: float) -> float:
        """Jump forward; wakes every sleeper so it re-checks its deadline.  Returns the new now."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        with self._lock:
            real = self._source()
            self._anchor_virtual = self._virtual(real) + seconds
            self._anchor_real = real
            now = self._anchor_virtual
        self._wake_all()
        return now

    def set_speed(self, speed: float) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        with self._lock:
            real = self._source()
            self._anchor_virtual = self._virtual(real)
            self._anchor_real = real
            self._speed = speed
        self._wake_all()

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of virtual time (``seconds / speed`` real, or less if advanced)."""
        await self.sleep_until(self.now() + seconds)

    async def sleep_until(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        entry = (loop, event)
        with self._lock:
            self._waiters.add(entry)
        try:
            while True:
                remaining = deadline - self.now()
                if remaining <= 0:
                    return
                event.clear()
                try:
                    await asyncio.wait_for(event.wait(), timeout=remaining / self._speed)
                except TimeoutError:
                    continue
        finally:
            with self._lock:
                self._waiters.discard(entry)

    def _virtual(self, real: float) -> float:
        return self._anchor_virtual + (real - self._anchor_real) * self._speed

    def _wake_all(self) -> None:
        with self._lock:
            waiters = list(self._waiters)
        for loop, event in waiters:
            if loop.is_closed():
                continue
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop closed between the check and the call
                continue
