"""hq/clock.py: the manual clock the expiry, grace and throttle tests move instead of sleeping."""

from __future__ import annotations

import asyncio
import time

import pytest

from hq.clock import ManualClock, SystemClock


def test_manual_clock_moves_both_times_together_and_never_back() -> None:
    clock = ManualClock(start=1_700_000_000.0, monotonic_start=50.0)
    assert (clock.time(), clock.monotonic()) == (1_700_000_000.0, 50.0)
    clock.advance(2.5)
    assert (clock.time(), clock.monotonic()) == (1_700_000_002.5, 52.5)
    with pytest.raises(ValueError):
        clock.advance(-1)


async def test_timers_fire_in_due_order_at_their_due_time_and_only_when_due() -> None:
    clock = ManualClock(start=1000.0)
    fired: list[tuple[str, float]] = []
    clock.call_later(3, lambda name: fired.append((name, clock.time())), "third")
    clock.call_later(1, lambda name: fired.append((name, clock.time())), "first")
    clock.call_later(1, lambda name: fired.append((name, clock.time())), "first, set later")
    clock.advance(0.999)
    assert fired == [] and clock.pending == 3
    clock.advance(2.001)
    assert fired == [("first", 1001.0), ("first, set later", 1001.0), ("third", 1003.0)]
    assert clock.time() == 1003.0 and clock.pending == 0


async def test_a_cancelled_timer_never_fires_and_a_callback_s_own_timer_fires_within_the_step() -> None:
    clock = ManualClock(start=0.0)
    fired: list[str] = []
    clock.call_later(1, fired.append, "cancelled").cancel()
    clock.call_later(1, lambda: clock.call_later(1, fired.append, "chained"))
    clock.advance(5)
    assert fired == ["chained"] and clock.pending == 0


async def test_a_timer_already_due_runs_on_the_loop_at_once() -> None:
    clock = ManualClock(start=0.0)
    ran = asyncio.Event()
    clock.call_later(0, ran.set)
    await asyncio.wait_for(ran.wait(), 5)
    assert clock.time() == 0.0


async def test_system_clock_is_the_real_one() -> None:
    clock = SystemClock()
    assert abs(clock.time() - time.time()) < 5 and abs(clock.monotonic() - time.monotonic()) < 5
    ran = asyncio.Event()
    clock.call_later(0.01, ran.set)
    await asyncio.wait_for(ran.wait(), 5)
