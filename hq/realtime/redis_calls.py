"""Calls to Redis that never raise, for the cluster features that go on without it.

Presence and the socket registry keep working on this node's own view while Redis is away: each
call waits at most :data:`REDIS_DEADLINE`; after a failure Redis is left alone for
:data:`RETRY_AFTER`; an outage is one warning, and one line when Redis answers again. The owner is
told both ways (``on_lost``, ``on_back``) so that it can write its view back once Redis returns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, Generic, TypeVar

#: No call waits on Redis longer than this (join, leave and disconnect await presence's).
REDIS_DEADLINE = 1.0
#: After a failed call, Redis is not asked again for this long; the node's own view answers.
RETRY_AFTER = 1.0

Target = TypeVar("Target")
Result = TypeVar("Result")


class RedisCalls(Generic[Target]):
    """Calls to ``target`` (a Redis client, or an object over one) within a deadline, never raising."""

    def __init__(self, target: Target | None, log: logging.Logger, feature: str, meanwhile: str, write_back: str,
                 on_lost: Callable[[], None], on_back: Callable[[], None]) -> None:
        self.target = target
        self._log = log
        self._feature = feature        # "presence": the start of each line
        self._meanwhile = meanwhile    # "showing this node's agents only"
        self._write_back = write_back  # "writing this node's agents back"
        self._on_lost = on_lost
        self._on_back = on_back
        self._paused_until = 0.0
        self.failing = False

    @property
    def resting(self) -> bool:
        """Whether a call now would not be made (no Redis, or within :data:`RETRY_AFTER` of a failure)."""
        return self.target is None or time.monotonic() < self._paused_until

    def seconds_until_retry(self) -> float:
        """How long until Redis is asked again after a failure (0 when it may be asked now)."""
        return max(0.0, self._paused_until - time.monotonic())

    async def ask(self, call: Callable[[Target], Awaitable[Result]]) -> Result | None:
        """``await call(target)`` within the deadline; None while Redis is away or when the call failed."""
        target = self.target
        if target is None or self.resting:
            return None
        try:
            async with asyncio.timeout(REDIS_DEADLINE):
                result = await call(target)
        except Exception as error:  # refused, reset, timed out, script error: this node's view answers
            self._paused_until = time.monotonic() + RETRY_AFTER
            self._on_lost()
            if not self.failing:
                self.failing = True
                self._log.warning("%s: Redis does not answer (%s); %s until it does", self._feature,
                                  describe(error), self._meanwhile)
            return None
        if self.failing:
            self.failing = False
            self._log.info("%s: Redis answers again; %s", self._feature, self._write_back)
            self._on_back()
        return result


def describe(error: BaseException) -> str:
    """An error in one line, for a log: its type and first line, never a traceback."""
    return f"{type(error).__name__}: {error}".splitlines()[0] if str(error) else type(error).__name__


__all__ = ["REDIS_DEADLINE", "RETRY_AFTER", "RedisCalls", "describe"]
