"""The time source of the subscription code.

Production uses wall time; tests hand in the sandbox's controllable clock (same two methods) so a
simulated afternoon of renewals runs in a second.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))
