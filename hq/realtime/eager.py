"""Handlers run where their event is read, eagerly: one that completes without waiting costs no Task.

Both real-time transports read a socket's frames in its connection's task and start each event's
handler there; a handler that waits (for the store's commit, say) is continued in a Task from
where it stopped, so the socket's next frames are read meanwhile and a client's pipelined messages
share a group commit. Events start in the order they arrive (ids, acks and broadcasts keep it).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import types
from typing import Any, Coroutine, Generator

from ..tasks import BackgroundTasks

log = logging.getLogger(__name__)

#: Python 3.12+ starts a Task eagerly itself.
EAGER_START = sys.version_info >= (3, 12)


def run_eagerly(coro: Coroutine[Any, Any, Any], background: BackgroundTasks) -> None:
    """Run ``coro`` now, up to its first wait; only if it waits, finish it in a Task.

    On Python 3.12+ this is asyncio's own ``eager_start``; on 3.11 the coroutine is started by
    hand and handed to a Task at its first wait (:func:`_resume`). Until that wait it runs in
    the socket's reading task, so a handler must not tie anything to ``current_task()``
    (``asyncio.timeout``) before its first ``await``; HQ's handlers do not.
    """
    if EAGER_START:
        task = asyncio.Task(coro, loop=asyncio.get_running_loop(), eager_start=True)  # type: ignore[call-arg]
        if task.done():
            if not task.cancelled() and task.exception() is not None:
                log.error("event handler failed: %r", task.exception())
            return
    else:
        try:
            waiting_on = coro.send(None)
        except StopIteration:
            return
        except Exception:  # HQ's handlers answer every error themselves; this is a last resort
            log.exception("event handler failed")
            return
        task = asyncio.ensure_future(_resume(waiting_on, coro))
    background.keep(task)


@types.coroutine
def _resume(waiting_on: Any, coro: Coroutine[Any, Any, Any]) -> Generator[Any, Any, Any]:
    """Continue a coroutine that was started by hand and stopped at ``waiting_on``.

    The Task waits for what the coroutine was waiting on (``yield``); the result, or the error
    (the Task throws a failed future's exception, or a cancellation, in here), goes back into the
    coroutine, and from then on ``yield from`` drives it as if the Task had run it from the start.
    """
    try:
        yield waiting_on
    except BaseException as exc:
        try:
            waiting_on = coro.throw(exc)
        except StopIteration as done:
            return done.value
        return (yield from _resume(waiting_on, coro))
    return (yield from coro)  # type: ignore[misc]
