"""Login throttling (per codename and per address) and per-socket event budgets.

Two throttles share one async interface: in memory for a single node, in Redis (sorted sets of
failure times) when several nodes must share the counts. The Redis one falls back to counting in
memory while Redis does not answer: logins go on during a Redis outage, limited per node.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import redis.asyncio as aioredis

from ..cluster.redis import Outage, RedisBreaker

from ..clock import Clock, SystemClock

log = logging.getLogger(__name__)


class LoginLimiter(Protocol):
    """Counts failed logins per codename and per address."""

    async def retry_after(self, codename: str, address: str) -> int: ...
    async def record_failure(self, codename: str, address: str) -> None: ...
    async def record_success(self, codename: str) -> None: ...


class LoginThrottle:
    """Counts failed logins in a sliding window, per codename and per client address.

    While either count is at its limit every attempt (even with the right password) is refused
    with the seconds until the oldest failure leaves the window.
    """

    def __init__(self, per_codename: int, per_address: int, window: float, clock: Clock | None = None) -> None:
        self._limits = {"codename": per_codename, "address": per_address}
        self._window = window
        self._clock = SystemClock() if clock is None else clock  # its monotonic time measures the window
        self._failures: dict[tuple[str, str], deque[float]] = {}

    async def retry_after(self, codename: str, address: str, now: float | None = None) -> int:
        """Seconds the caller must wait, or 0 when an attempt is allowed."""
        now = self._clock.monotonic() if now is None else now
        wait = 0.0
        for key in self._keys(codename, address):
            failures = self._prune(key, now)
            if len(failures) >= self._limits[key[0]]:
                wait = max(wait, failures[0] + self._window - now)
        return math.ceil(wait) if wait > 0 else 0

    async def record_failure(self, codename: str, address: str, now: float | None = None) -> None:
        """Count one failed attempt against both keys."""
        now = self._clock.monotonic() if now is None else now
        for key in self._keys(codename, address):
            self._prune(key, now).append(now)

    async def record_success(self, codename: str) -> None:
        """A correct login clears its codename's failures (the address keeps its count)."""
        self._failures.pop(("codename", codename.lower()), None)

    def _keys(self, codename: str, address: str) -> tuple[tuple[str, str], tuple[str, str]]:
        return ("codename", codename.lower()), ("address", address)

    def _prune(self, key: tuple[str, str], now: float) -> deque[float]:
        failures = self._failures.setdefault(key, deque())
        while failures and failures[0] <= now - self._window:
            failures.popleft()
        if not failures and len(self._failures) > 100_000:
            self._failures.pop(key, None)
            failures = self._failures.setdefault(key, deque())
        return failures


class RedisLoginThrottle:
    """The same sliding windows as :class:`LoginThrottle`, kept in Redis for every node to share.

    Redis is a convenience here, never a reason to refuse a login: while it does not answer (down,
    restarting, hung) the failures are counted on this node by an in-memory :class:`LoginThrottle`,
    so a password guesser is still limited, per node. Each Redis call goes through
    :attr:`breaker` (:class:`hq.cluster.redis.RedisBreaker`): bounded in time, and after a failure
    Redis is left alone for a while so that a hung Redis costs one login that wait per pause, not
    every login. The first call that answers again brings the shared counts back. Failures counted
    on this node during the outage keep counting (on this node) until they leave the window: the
    outage must not reset a guesser.
    """

    def __init__(self, client: aioredis.Redis, per_codename: int, per_address: int, window: float,
                 prefix: str = "hq:login-failures", clock: Clock | None = None) -> None:
        # Wall time: the failure times in Redis are shared with the other nodes.
        self._clock = SystemClock() if clock is None else clock
        self._limits = {"codename": per_codename, "address": per_address}
        self._window = window
        self._prefix = prefix
        self._local = LoginThrottle(per_codename, per_address, window, self._clock)
        outage = Outage.of_redis(log, "login limits", "counting failed logins on this node",
                                 "failed logins are counted across nodes")
        self.breaker: RedisBreaker[aioredis.Redis] = RedisBreaker(client, outage)

    def _keys(self, codename: str, address: str) -> dict[str, str]:
        return {"codename": f"{self._prefix}:codename:{codename.lower()}",
                "address": f"{self._prefix}:address:{address}"}

    async def retry_after(self, codename: str, address: str) -> int:
        """Seconds the caller must wait, or 0 when an attempt is allowed."""
        local = await self._local.retry_after(codename, address)
        shared = await self.breaker.ask(lambda redis: self._redis_retry_after(redis, codename, address))
        return max(local, shared or 0)

    async def record_failure(self, codename: str, address: str) -> None:
        """Count one failed attempt against both keys (in Redis, else on this node)."""
        if await self.breaker.ask(lambda redis: self._redis_record_failure(redis, codename, address)) is None:
            await self._local.record_failure(codename, address)

    async def record_success(self, codename: str) -> None:
        """A correct login clears its codename's failures (the address keeps its count)."""
        await self._local.record_success(codename)
        await self.breaker.ask(lambda redis: redis.delete(self._keys(codename, "")["codename"]))

    async def _redis_retry_after(self, redis: aioredis.Redis, codename: str, address: str) -> int:
        now = self._clock.time()
        keys = self._keys(codename, address)
        async with redis.pipeline(transaction=True) as pipe:
            for key in keys.values():
                pipe.zremrangebyscore(key, "-inf", now - self._window)
                pipe.zcard(key)
                pipe.zrange(key, 0, 0, withscores=True)
            replies = await pipe.execute()
        wait = 0.0
        for index, kind in enumerate(keys):
            _, count, oldest = replies[3 * index:3 * index + 3]  # one key's three replies
            if count >= self._limits[kind] and oldest:
                wait = max(wait, oldest[0][1] + self._window - now)
        return math.ceil(wait) if wait > 0 else 0

    async def _redis_record_failure(self, redis: aioredis.Redis, codename: str, address: str) -> bool:
        now = self._clock.time()
        async with redis.pipeline(transaction=True) as pipe:
            for key in self._keys(codename, address).values():
                pipe.zadd(key, {f"{now}:{uuid.uuid4().hex[:8]}": now})
                pipe.expire(key, int(self._window) + 1)
            await pipe.execute()
        return True


@dataclass
class TokenBucket:
    """A per-socket event budget: ``rate`` events a second with bursts of ``burst``."""

    rate: float
    burst: int
    tokens: float = field(init=False)
    stamp: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = float(self.burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        """Spend one event; False when the budget is exhausted."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True
