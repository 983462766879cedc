"""The controllable clock shared by the sandboxes: offset, speed, and sleepers that wake on advance."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service.sandbox.clock import Clock


class FakeTime:
    def __init__(self) -> None:
        self.value = 1_000.0

    def __call__(self) -> float:
        return self.value


def test_advance_and_speed_compose() -> None:
    real = FakeTime()
    clock = Clock(source=real)
    assert clock.now() == 1_000.0
    clock.advance(60)
    assert clock.now() == 1_060.0
    assert clock.offset == 60
    real.value += 1
    assert clock.now() == 1_061.0
    clock.set_speed(100)
    real.value += 1
    assert clock.now() == 1_161.0  # one real second counts a hundred
    clock.set_speed(1)
    real.value += 1
    assert clock.now() == 1_162.0
    with pytest.raises(ValueError, match="forward"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="positive"):
        clock.set_speed(0)


async def test_sleep_is_compressed_by_speed() -> None:
    clock = Clock(speed=1000)
    begin = time.monotonic()
    await clock.sleep(30)  # 30 virtual seconds
    assert time.monotonic() - begin < 1.0


async def test_sleeper_wakes_when_another_thread_advances() -> None:
    clock = Clock()
    target = clock.now() + 3600
    timer = threading.Timer(0.05, clock.advance, args=(3600,))
    timer.start()
    begin = time.monotonic()
    await asyncio.wait_for(clock.sleep_until(target), timeout=5)
    assert time.monotonic() - begin < 2
    assert clock.now() >= target
    timer.join()


async def test_sleeper_keeps_sleeping_after_a_short_advance() -> None:
    clock = Clock()
    task = asyncio.ensure_future(clock.sleep(3600))
    await asyncio.sleep(0.01)
    clock.advance(60)
    await asyncio.sleep(0.05)
    assert not task.done()
    clock.advance(3600)
    await asyncio.wait_for(task, timeout=2)
