"""The time HQ's expiring things are judged by: token lifetimes, the refresh grace window, the
login-throttle windows and the timers that warn and end a socket when its token expires.

These features read the time through a :class:`Clock` handed to them at construction, never from
:mod:`time` directly, so that a test can replace the clock with a :class:`ManualClock` and move it
on at will: a token "expires", a grace window closes or a throttle window passes at once, instead
of after the test has slept through it. HQ itself always runs on :class:`SystemClock`.

A bottom module: it imports nothing of HQ's, so any package may use it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Any, Callable, Protocol


class TimerHandle(Protocol):
    """A scheduled callback that may still be called off (``asyncio.TimerHandle`` is one)."""

    def cancel(self) -> None:
        """Do not call the callback (nothing happens if it has already run)."""


class Clock(Protocol):
    """Wall time, monotonic time and timers, as the time-dependent features of HQ need them."""

    def time(self) -> float:
        """Seconds since the epoch: what ``iat``, ``exp`` and stored expiries are written in."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary start that never go back: for windows measured on this node."""

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> TimerHandle:
        """Call ``callback(*args)`` on the running event loop once ``delay`` seconds have passed."""


class SystemClock:
    """The real clock: :func:`time.time`, :func:`time.monotonic` and the event loop's timers."""

    def time(self) -> float:
        """The system's wall time."""
        return time.time()

    def monotonic(self) -> float:
        """The system's monotonic time."""
        return time.monotonic()

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> TimerHandle:
        """``loop.call_later`` on the running loop."""
        return asyncio.get_running_loop().call_later(delay, callback, *args)


class ManualTimer:
    """A timer of a :class:`ManualClock`, due at one of its monotonic times."""

    def __init__(self, due: float, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.due = due
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        """Do not call the callback when the clock passes ``due``."""
        self.cancelled = True


class ManualClock:
    """A clock for tests that stands still until :meth:`advance` moves it.

    Both times move together. A timer fires only when :meth:`advance` passes its due time, in due
    order (ties in the order they were set), with the clock showing that due time while its
    callback runs, exactly as the event loop would have called it had that much time passed. A
    timer set for now or the past is handed to the event loop at once (``loop.call_soon``), as
    ``loop.call_later`` with a delay of zero would run it.
    """

    def __init__(self, start: float, monotonic_start: float = 1000.0) -> None:
        self._offset = monotonic_start - start  # monotonic time = wall time + offset
        self._now = start
        self._timers: list[tuple[float, int, ManualTimer]] = []
        self._order = itertools.count()

    def time(self) -> float:
        """The clock's wall time."""
        return self._now

    def monotonic(self) -> float:
        """The clock's monotonic time (moves exactly as its wall time does)."""
        return self._now + self._offset

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> TimerHandle:
        """Call ``callback(*args)`` when :meth:`advance` has moved the clock ``delay`` seconds on."""
        if delay <= 0:
            return asyncio.get_running_loop().call_soon(callback, *args)
        timer = ManualTimer(self.monotonic() + delay, callback, args)
        heapq.heappush(self._timers, (timer.due, next(self._order), timer))
        return timer

    def advance(self, seconds: float) -> None:
        """Move both times ``seconds`` on, calling every timer that falls due meanwhile, in order.

        Must be called from a coroutine on the event loop the timers' callbacks expect (a callback
        of HQ's typically starts a task). Timers set by those callbacks fire too if they fall due
        within the same step.
        """
        if seconds < 0:
            raise ValueError("a clock does not go back")
        target = self.monotonic() + seconds
        while self._timers and self._timers[0][0] <= target:
            due, _, timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self._now = max(self._now, due - self._offset)
            timer.callback(*timer.args)
        self._now = target - self._offset

    @property
    def pending(self) -> int:
        """Timers set and neither fired nor cancelled."""
        return sum(not timer.cancelled for _, _, timer in self._timers)
