"""Fire-and-forget tasks that are never lost: kept, reported once if they fail, ended at shutdown.

asyncio keeps only a weak reference to a task: one whose result nobody keeps may be collected
before it finishes, an exception it ends with is reported (if at all) as "never retrieved" at
some later garbage collection, and at shutdown it is cut off with the loop, mid-write. A
:class:`BackgroundTasks` holds every such task until it is done, logs the error one ended with
(one line, no traceback), and cancels and awaits those still running when the process stops.

It sits at the bottom of the layers so that every layer (the store included) may use it; one set
per process is made in :func:`hq.app.build` and closed in the app's ``lifecycle``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Coroutine

from .errors import describe

log = logging.getLogger(__name__)


class BackgroundTasks:
    """A set of fire-and-forget tasks, each kept until done and cancelled at :meth:`close`."""

    def __init__(self) -> None:
        self._running: set[asyncio.Future[Any]] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._running)

    def spawn(self, coroutine: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        """Run ``coroutine`` in a task of its own, kept here until it ends."""
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self.keep(task)
        return task

    def keep(self, task: asyncio.Future[Any]) -> None:
        """Keep a task made elsewhere (e.g. started eagerly) until it ends, like :meth:`spawn`'s."""
        if task.done():
            self._finished(task)
            return
        self._running.add(task)
        task.add_done_callback(self._finished)
        if self._closed:  # a task spawned while the process stops does not outlive it
            task.cancel()

    def _finished(self, task: asyncio.Future[Any]) -> None:
        self._running.discard(task)
        if task.cancelled():
            return
        error = task.exception()  # retrieved here, so asyncio does not report it again
        if error is not None:
            name = task.get_name() if isinstance(task, asyncio.Task) else "a background task"
            log.error("%s failed: %s", name, describe(error))

    async def close(self) -> None:
        """Cancel every task still running and wait until each has ended (the process is stopping)."""
        self._closed = True
        while self._running:
            running = list(self._running)
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
