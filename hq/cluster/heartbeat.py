"""HQ's one background loop: a step every so often, sooner when woken, that never holds a stop up.

Presence, the socket registry and the revocation feed each run one: a step (refresh a TTL, write
what changed, read the feed) that says how long to wait before the next one, and a wake-up for
work that cannot wait that long. :meth:`Heartbeat.stop` ends the loop even when a cancellation is
lost on the way: a task cancelled while redis-py finishes a command, or while ``asyncio.wait_for``
returns (Python 3.11 swallows a cancellation that arrives as the awaited event is set), may carry on
as if it had not been cancelled; the stop flag and the wake-up end it anyway, so SIGTERM never hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Awaitable, Callable

#: ``step()`` does one round of work and returns the seconds to wait before the next one. It must not
#: raise (each user's step answers its own failures: one warning per outage, then it retries).
Step = Callable[[], Awaitable[float]]


class Heartbeat:
    """Runs ``step`` in a task named ``name`` until :meth:`stop`: again after the delay it returns, or when woken."""

    def __init__(self, name: str, step: Step) -> None:
        self._name = name
        self._step = step
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """Whether the loop was started and not stopped."""
        return self._task is not None and not self._stopping

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopping

    def start(self) -> None:
        """Start the loop (its first step runs at once); idempotent."""
        if self._task is None and not self._stopping:
            self._task = asyncio.create_task(self._run(), name=self._name)

    def wake(self) -> None:
        """Run the next step now rather than at the end of the current wait."""
        self._wake.set()

    async def stop(self) -> None:
        """End the loop and wait until it has ended (a step in progress is cancelled)."""
        self._stopping = True
        if self._task is None:
            return
        self._wake.set()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None

    async def _run(self) -> None:
        while not self._stopping:
            # Cleared before the step: a wake-up that comes while it runs makes the next one run at once.
            self._wake.clear()
            delay = await self._step()
            if self._stopping:  # stop() came during the step (see the module's docstring)
                return
            # asyncio.timeout, not asyncio.wait_for: see the module's docstring.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, delay)):
                    await self._wake.wait()
