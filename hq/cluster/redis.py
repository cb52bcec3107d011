"""HQ's one Redis client per process, and the breaker every cluster feature calls Redis through.

Redis is a convenience in HQ, never a reason for a login, a join or a revocation to fail or to wait
long. Every feature that uses it (login limits, presence, the socket registry, revocation push)
calls it through a :class:`RedisBreaker` of its own: each call waits at most ``deadline`` seconds
and never raises; after a failure Redis is left alone for ``pause`` seconds (one call at a time
probes it meanwhile) and the feature answers from this node's own view; an outage is one warning,
and one line when Redis answers again. The owner is told both ways (``on_lost``, ``on_back``) so
that it can write its view back once Redis returns. :class:`Outage` is that warning-once pair of
lines, for loops that are not single calls (a subscription, a feed read from the store).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Generic, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from ..errors import describe

#: Seconds to connect, and to wait for each reply: a login waits on it.
REDIS_SOCKET_TIMEOUT = 0.5
#: No call waits on Redis longer than this (the client's own socket timeouts are shorter: this is
#: the backstop for a reply that trickles in).
REDIS_DEADLINE = 1.0
#: After a failed call, Redis is not asked again for this long; the node's own view answers.
RETRY_AFTER = 1.0

Target = TypeVar("Target")
Result = TypeVar("Result")
Clock = Callable[[], float]


def redis_client(url: str) -> aioredis.Redis:
    """The process's Redis client (made once, in :func:`hq.app.build`): quick to give up, quick to recover.

    ``from_url`` alone would wait on a hung Redis for as long as the OS lets a socket wait, and
    does not retry: after Redis restarted, the first command on each pooled connection would fail
    with "Connection closed by server". One immediate retry on a connection error replaces such a
    connection (and costs nothing when Redis refuses); a timeout is not retried, so a hung Redis
    costs one ``REDIS_SOCKET_TIMEOUT``. Pub/sub (``client.pubsub()``) takes a connection of its own
    from the same pool; its reads wait as long as ``get_message(timeout=...)`` asks.
    """
    return aioredis.Redis.from_url(url, socket_connect_timeout=REDIS_SOCKET_TIMEOUT,
                                   socket_timeout=REDIS_SOCKET_TIMEOUT,
                                   retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)))


class Outage:
    """One warning when a backend stops answering, one line when it answers again; nothing in between.

    ``lost`` is a log format with one ``%s`` for the error (:func:`hq.errors.describe`), ``back`` a
    plain line (None when the owner says it another way); both are written to ``log``.
    """

    def __init__(self, log: logging.Logger, lost: str, back: str | None) -> None:
        self._log = log
        self._lost = lost
        self._back = back
        self.failing = False

    def failed(self, error: BaseException) -> bool:
        """A call failed; True (and one warning) if that starts an outage."""
        if self.failing:
            return False
        self.failing = True
        self._log.warning(self._lost, describe(error))
        return True

    def answered(self) -> bool:
        """A call succeeded; True (and one line) if that ends an outage."""
        if not self.failing:
            return False
        self.failing = False
        if self._back is not None:
            self._log.info(self._back)
        return True

    @classmethod
    def of_redis(cls, log: logging.Logger, feature: str, meanwhile: str, back: str) -> "Outage":
        """The usual lines: ``<feature>: Redis does not answer (<error>); <meanwhile> until it does``
        and ``<feature>: Redis answers again; <back>``."""
        return cls(log, f"{feature}: Redis does not answer (%s); {meanwhile} until it does",
                   f"{feature}: Redis answers again; {back}")


class RedisBreaker(Generic[Target]):
    """Calls to ``target`` (a Redis client, or an object over one) within a deadline, never raising.

    ``pause`` is how long Redis is left alone after a failure (0: every call tries, each still
    bounded by ``deadline``); ``clock`` is injectable for tests.
    """

    def __init__(self, target: Target | None, outage: Outage, *, on_lost: Callable[[], None] | None = None,
                 on_back: Callable[[], None] | None = None, deadline: float = REDIS_DEADLINE,
                 pause: float = RETRY_AFTER, clock: Clock = time.monotonic) -> None:
        self.target = target
        self.outage = outage
        self.deadline = deadline
        self.pause = pause
        self._on_lost = on_lost
        self._on_back = on_back
        self._clock = clock
        self._paused_until = 0.0

    @property
    def failing(self) -> bool:
        """Whether the last call failed (Redis is away, as far as this feature knows)."""
        return self.outage.failing

    @property
    def resting(self) -> bool:
        """Whether a call now would not be made (no Redis, or within ``pause`` of a failure)."""
        return self.target is None or self._clock() < self._paused_until

    def seconds_until_retry(self) -> float:
        """How long until Redis is asked again after a failure (0 when it may be asked now)."""
        return max(0.0, self._paused_until - self._clock())

    async def ask(self, call: Callable[[Target], Awaitable[Result]]) -> Result | None:
        """``await call(target)`` within the deadline; None while Redis is away or when the call failed."""
        target = self.target
        if target is None or self.resting:
            return None
        if self.failing:
            # This call probes a Redis that was away: the calls arriving meanwhile do not all wait on it.
            self._paused_until = self._clock() + self.pause
        try:
            async with asyncio.timeout(self.deadline):
                result = await call(target)
        except Exception as error:  # refused, reset, timed out, script error: this node's view answers
            self._paused_until = self._clock() + self.pause
            if self._on_lost is not None:
                self._on_lost()
            self.outage.failed(error)
            return None
        if self.outage.answered():
            self._paused_until = 0.0  # the probe's pause is over: Redis answers
            if self._on_back is not None:
                self._on_back()
        return result


#: A quiet pub/sub connection is checked with a PING this often; no answer within as long again
#: means it is dead (a cut network shows only so: no reset ever comes).
PUBSUB_PING_EVERY = 5.0


async def pubsub_messages(pubsub: PubSub, ping_every: float = PUBSUB_PING_EVERY) -> AsyncIterator[dict[str, Any]]:
    """Every message of a subscribed ``pubsub``, for ever; raises :class:`ConnectionError` when a PING
    sent after ``ping_every`` quiet seconds gets no answer within as long again (the caller then
    subscribes anew on a fresh connection)."""
    pinged = False
    while True:
        message = await pubsub.get_message(timeout=ping_every)
        if message is None:
            if pinged:
                raise ConnectionError(f"no answer to PING within {ping_every:g} s")
            await pubsub.ping()
            pinged = True
            continue
        pinged = False
        yield message


__all__ = ["PUBSUB_PING_EVERY", "REDIS_DEADLINE", "REDIS_SOCKET_TIMEOUT", "RETRY_AFTER", "Outage", "RedisBreaker",
           "pubsub_messages", "redis_client"]
