"""Login throttling (per codename and per address) and per-socket event budgets.

Two throttles share one async interface: in memory for a single node, in Redis (sorted sets of
failure times) when several nodes must share the counts. The Redis one falls back to counting in
memory while Redis does not answer: logins go on during a Redis outage, limited per node.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Protocol, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

T = TypeVar("T")


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

    def __init__(self, per_codename: int, per_address: int, window: float) -> None:
        self._limits = {"codename": per_codename, "address": per_address}
        self._window = window
        self._failures: dict[tuple[str, str], deque[float]] = {}

    async def retry_after(self, codename: str, address: str, now: float | None = None) -> int:
        """Seconds the caller must wait, or 0 when an attempt is allowed."""
        now = time.monotonic() if now is None else now
        wait = 0.0
        for key in self._keys(codename, address):
            failures = self._prune(key, now)
            if len(failures) >= self._limits[key[0]]:
                wait = max(wait, failures[0] + self._window - now)
        return math.ceil(wait) if wait > 0 else 0

    async def record_failure(self, codename: str, address: str, now: float | None = None) -> None:
        """Count one failed attempt against both keys."""
        now = time.monotonic() if now is None else now
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


REDIS_SOCKET_TIMEOUT = 0.5  # seconds to connect, and to wait for each reply: a login waits on it


def redis_client(url: str) -> aioredis.Redis:
    """A Redis client for the login limits (and ``/healthz``): quick to give up, quick to recover.

    ``from_url`` alone would wait on a hung Redis for as long as the OS lets a socket wait, and
    does not retry: after Redis restarted, the first command on each pooled connection would fail
    with "Connection closed by server". One immediate retry on a connection error replaces such a
    connection (and costs nothing when Redis refuses); a timeout is not retried, so a hung Redis
    costs one ``REDIS_SOCKET_TIMEOUT``.
    """
    return aioredis.Redis.from_url(url, socket_connect_timeout=REDIS_SOCKET_TIMEOUT,
                                   socket_timeout=REDIS_SOCKET_TIMEOUT,
                                   retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)))


class RedisLoginThrottle:
    """The same sliding windows as :class:`LoginThrottle`, kept in Redis for every node to share.

    Redis is a convenience here, never a reason to refuse a login: while it does not answer (down,
    restarting, hung) the failures are counted on this node by an in-memory :class:`LoginThrottle`,
    so a password guesser is still limited, per node. Each Redis call is bounded by
    ``REDIS_DEADLINE``; after a failure Redis is left alone for ``PROBE_INTERVAL`` so that a hung
    Redis costs one login that wait per interval, not every login. The first call that answers
    again brings the shared counts back. Failures counted on this node during the outage keep
    counting (on this node) until they leave the window: the outage must not reset a guesser.
    """

    REDIS_DEADLINE = 1.0  # seconds; the client's own socket timeouts are shorter, this is the backstop
    PROBE_INTERVAL = 1.0  # seconds between attempts to reach Redis while it is down

    def __init__(self, client: aioredis.Redis, per_codename: int, per_address: int, window: float,
                 prefix: str = "hq:login-failures") -> None:
        self._redis = client
        self._limits = {"codename": per_codename, "address": per_address}
        self._window = window
        self._prefix = prefix
        self._local = LoginThrottle(per_codename, per_address, window)
        self._down = False
        self._probe_at = 0.0  # monotonic time before which Redis is not asked while it is down

    def _keys(self, codename: str, address: str) -> dict[str, str]:
        return {"codename": f"{self._prefix}:codename:{codename.lower()}",
                "address": f"{self._prefix}:address:{address}"}

    async def retry_after(self, codename: str, address: str) -> int:
        """Seconds the caller must wait, or 0 when an attempt is allowed."""
        local = await self._local.retry_after(codename, address)
        shared = await self._shared(lambda: self._redis_retry_after(codename, address))
        return max(local, shared or 0)

    async def record_failure(self, codename: str, address: str) -> None:
        """Count one failed attempt against both keys (in Redis, else on this node)."""
        if await self._shared(lambda: self._redis_record_failure(codename, address)) is None:
            await self._local.record_failure(codename, address)

    async def record_success(self, codename: str) -> None:
        """A correct login clears its codename's failures (the address keeps its count)."""
        await self._local.record_success(codename)
        await self._shared(lambda: self._redis.delete(self._keys(codename, "")["codename"]))

    async def _redis_retry_after(self, codename: str, address: str) -> int:
        now = time.time()
        keys = self._keys(codename, address)
        async with self._redis.pipeline(transaction=True) as pipe:
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

    async def _redis_record_failure(self, codename: str, address: str) -> bool:
        now = time.time()
        async with self._redis.pipeline(transaction=True) as pipe:
            for key in self._keys(codename, address).values():
                pipe.zadd(key, {f"{now}:{uuid.uuid4().hex[:8]}": now})
                pipe.expire(key, int(self._window) + 1)
            await pipe.execute()
        return True

    async def _shared(self, call: Callable[[], Awaitable[T]]) -> T | None:
        """``call()``'s result (never None), or None when Redis did not answer (or is left alone)."""
        now = time.monotonic()
        if self._down and now < self._probe_at:
            return None
        # Set before trying, so that the logins arriving meanwhile do not all wait on the same probe.
        self._probe_at = now + self.PROBE_INTERVAL
        try:
            async with asyncio.timeout(self.REDIS_DEADLINE):
                result = await call()
        except (RedisError, OSError, TimeoutError) as exc:
            if not self._down:
                self._down = True
                log.warning("login limits: Redis does not answer (%s); counting failed logins on this node "
                            "until it does", _describe(exc))
            return None
        if self._down:
            self._down = False
            log.info("login limits: Redis answers again; failed logins are counted across nodes")
        return result


def _describe(error: BaseException) -> str:
    """An exception as one short line for a log (a timeout has no message of its own)."""
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


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
