"""Revocations made anywhere end the affected sockets here: pushed over Redis, the store's feed as catch-up.

A revocation (logout, refresh reuse, ``passwd``, ``disable``, ``role``) is first written to the
store, which refuses the session's tokens from then on, and appends an entry to the store's
revocation feed. What is left is ending the live sockets of that session on every HQ node:

* on the node (or CLI process) that revoked, :meth:`RevocationWatcher.revoked_here` ends the local
  sockets at once and, with ``[cluster] redis_url``, publishes the revocation on the Redis channel
  ``<cluster.channel>:revocations``;
* every node subscribes to that channel and ends its sockets as soon as a message arrives
  (milliseconds while Redis is up);
* every node also keeps reading the store's feed. That is the catch-up for whatever pub/sub cannot
  promise (it delivers to those subscribed at the moment of publishing, at most once): a Redis
  outage, a publisher that could not reach Redis, a node that was restarting. It is read every
  ``[storage] revocation_poll`` seconds while the push is down (or not configured), and
  :data:`PUSHED_POLL_FACTOR` times less often while the push is subscribed.

Each revocation therefore reaches a node twice (push and feed); :class:`_Ledger` pairs the two so it
is applied once. Applying an agent-wide revocation twice is not harmless: a late second
application would also end the sockets of a session the agent opened after being re-enabled.

A revocation can never fail because Redis is down: publishing is bounded in time, its errors are
logged (one warning per outage) and swallowed, and the feed delivers the revocation instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from typing import Any, Awaitable, Callable

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from ..errors import describe
from ..store import Store
from .heartbeat import Heartbeat
from .redis import Outage, RedisBreaker, pubsub_messages

log = logging.getLogger(__name__)

#: ``end_sessions(codename, session_id, reason)``: end this node's sockets of one login session, or of
#: every session of ``codename`` when ``session_id`` is None; returns how many were ended.
EndSessions = Callable[[str, str | None, str], Awaitable[int]]
#: What identifies one revocation in both the push and the feed: (codename in lower case, session id, reason).
Key = tuple[str, str | None, str]

#: While the push is subscribed the feed is only the safety net, so it is read this many times less often.
PUSHED_POLL_FACTOR = 8
#: A publish never holds a revocation (a logout, a CLI command) up for longer than this.
PUBLISH_TIMEOUT = 1.0
#: Waits between attempts to subscribe again while Redis is away, doubling up to the maximum.
RESUBSCRIBE_FIRST, RESUBSCRIBE_MAX = 0.1, 2.0
#: How long an application from the feed waits for the same revocation's push (which is normally
#: milliseconds behind); kept short so that a push lost in an outage cannot shadow a later one.
FEED_WAITS_FOR_PUSH = 5.0
#: The least time an application from the push waits for the feed entry (at most one feed period behind).
PUSH_WAITS_FOR_FEED = 60.0


def revocation_channel(prefix: str) -> str:
    """The Redis pub/sub channel that carries revocations, under the ``[cluster] channel`` prefix."""
    return f"{prefix}:revocations"


class RevocationBus:
    """Redis pub/sub for revocations, over the process's Redis client: publish one, or subscribe to everyone's.

    The client fails fast (:func:`hq.cluster.redis.redis_client`): a revocation must not wait on a
    Redis that is away, and the subscriber must notice an outage at once so that the feed takes
    over. Every publish is tried (the breaker does not pause: a revocation that reaches Redis spares
    the other nodes a feed period), each bounded by :data:`PUBLISH_TIMEOUT`. ``node`` is this
    process's node id; it marks its own messages, which its subscriber has already applied.
    """

    def __init__(self, client: aioredis.Redis, channel: str, node: str) -> None:
        self.channel = channel
        self.node = node
        self._redis = client
        outage = Outage(log, "could not publish a revocation to Redis (%s); other nodes apply it from the "
                        "store's revocation feed instead", "publishing revocations to Redis again")
        self._publisher = RedisBreaker(client, outage, deadline=PUBLISH_TIMEOUT, pause=0.0)

    async def publish(self, codename: str, session_id: str | None, reason: str) -> bool:
        """Tell every subscribed node; never raises. Returns whether Redis took the message."""
        # The wire keeps the contract's name for a login session id: "sid".
        payload = json.dumps({"node": self.node, "codename": codename, "sid": session_id, "reason": reason})
        return await self._publisher.ask(lambda redis: redis.publish(self.channel, payload)) is not None

    def pubsub(self) -> PubSub:
        """A new, not yet subscribed, pub/sub connection (from the client's pool)."""
        return self._redis.pubsub()


class RevocationWatcher:
    """Ends this node's sockets for every revocation, wherever it was made, once.

    ``end_sessions(codename, session_id, reason)`` ends the local sockets of one session or of
    every session of ``codename``. Register :meth:`revoked_here` with
    :meth:`hq.auth.sessions.SessionService.on_revoke`; :meth:`start` follows the others' revocations.
    """

    def __init__(self, store: Store, end_sessions: EndSessions, interval: float,
                 bus: RevocationBus | None = None) -> None:
        self._store = store
        self._end_sessions = end_sessions
        self._interval = interval
        self._bus = bus
        self._ledger = _Ledger(feed_waits=FEED_WAITS_FOR_PUSH,
                               push_waits=max(PUSH_WAITS_FOR_FEED, 4 * interval * PUSHED_POLL_FACTOR))
        self._cursor = 0
        self._subscribed = False
        self._feed = Heartbeat("revocation-feed", self._read_feed)
        # The store being down is logged once per outage, not once per poll.
        self._feed_outage = Outage(log, "cannot read the revocation feed (%s); retrying",
                                   "reading the revocation feed again")
        self._push_outage = Outage(log, "revocation push from Redis unavailable (%s); following the store's "
                                   f"feed every {interval:g} s until Redis returns", None)  # subscribing says it
        self._push_task: asyncio.Task[None] | None = None

    @property
    def subscribed(self) -> bool:
        """Whether revocations are being pushed to this node right now (Redis subscription live)."""
        return self._subscribed

    @property
    def poll_interval(self) -> float:
        """Seconds between two reads of the store's feed, as things stand."""
        return self._interval * PUSHED_POLL_FACTOR if self._subscribed else self._interval

    @property
    def node(self) -> str | None:
        """The node id this watcher's messages carry (None without a bus)."""
        return self._bus.node if self._bus is not None else None

    async def start(self) -> None:
        """Skip the feed's past, then follow the feed and (with a bus) the pushed revocations."""
        self._cursor = await self._store.last_revocation_id()
        self._feed.start()
        if self._bus is not None and self._push_task is None:
            # Not awaited: a Redis that is down at start-up must not stop HQ; the feed covers for it.
            self._push_task = asyncio.create_task(self._follow_pushes(self._bus), name="revocation-push")

    async def stop(self) -> None:
        """Stop following (the Redis client is the process's: its owner closes it)."""
        await self._feed.stop()
        if self._push_task is not None:
            self._push_task.cancel()
            await asyncio.gather(self._push_task, return_exceptions=True)
            self._push_task = None

    async def revoked_here(self, codename: str, session_id: str | None, reason: str) -> None:
        """A revocation this process made (already in the store): end local sockets, tell the others."""
        await self._apply(codename, session_id, reason, _PUSH)
        if self._bus is not None:
            await self._bus.publish(codename, session_id, reason)

    async def poll(self) -> None:
        """Apply every feed entry written since the last poll (those already pushed are skipped)."""
        self._ledger.expire(time.monotonic())
        for entry in await self._store.revocations_after(self._cursor):
            self._cursor = entry.id
            await self._apply(entry.codename, entry.session_id, entry.reason, _FEED)

    async def _apply(self, codename: str, session_id: str | None, reason: str, path: str) -> None:
        if self._ledger.first((codename.lower(), session_id or None, reason), path, time.monotonic()):
            await self._end_sessions(codename, session_id, reason)

    # the feed -----------------------------------------------------------------------------------
    async def _read_feed(self) -> float:
        """One read of the feed (a failure is logged once per outage); the seconds until the next."""
        try:
            await self.poll()
        except Exception as error:
            self._feed_outage.failed(error)
        else:
            self._feed_outage.answered()
        return self.poll_interval

    # the push -----------------------------------------------------------------------------------
    async def _follow_pushes(self, bus: RevocationBus) -> None:
        wait = RESUBSCRIBE_FIRST
        while True:
            pubsub = bus.pubsub()
            try:
                await self._receive(bus, pubsub)  # returns only by raising
            except Exception as error:  # connection refused, reset or silent: the feed takes over
                self._push_outage.failed(error)
                if self._subscribed:
                    self._set_subscribed(False)
                    wait = RESUBSCRIBE_FIRST
            finally:
                await asyncio.shield(_close_quietly(pubsub))
            await asyncio.sleep(wait)
            wait = min(wait * 2, RESUBSCRIBE_MAX)

    async def _receive(self, bus: RevocationBus, pubsub: PubSub) -> None:
        await pubsub.subscribe(bus.channel)
        async for message in pubsub_messages(pubsub):
            kind = message["type"]
            if kind == "subscribe":
                self._set_subscribed(True)
            elif kind == "message":
                await self._pushed(bus, message["data"])

    async def _pushed(self, bus: RevocationBus, data: Any) -> None:
        try:
            fields = json.loads(data)
            node, codename, session_id, reason = fields["node"], fields["codename"], fields["sid"], fields["reason"]
            if not (isinstance(codename, str) and isinstance(reason, str)
                    and (session_id is None or isinstance(session_id, str))):
                raise TypeError("codename, sid or reason of the wrong type")
        except (ValueError, KeyError, TypeError) as error:
            log.warning("ignored a malformed revocation message on %s (%s)", bus.channel, describe(error))
            return
        if node == bus.node:
            return  # revoked_here has applied it already
        try:
            await self._apply(codename, session_id, reason, _PUSH)
        except Exception:
            log.exception("ending sockets for a pushed revocation failed")

    def _set_subscribed(self, subscribed: bool) -> None:
        self._subscribed = subscribed
        if subscribed:
            self._push_outage.answered()
            log.info("revocations are pushed through Redis; the store's feed is read every %g s",
                     self.poll_interval)
        # Read the feed now: what was pushed while this node was not subscribed is only there, and the
        # wait in progress may be the long one of a subscribed node.
        self._feed.wake()


_PUSH, _FEED = "push", "feed"


class _Ledger:
    """Pairs the two arrivals of each revocation (pushed and from the feed) so it is applied once.

    The first arrival of a key by one path is applied and waits for its twin; an arrival by the other
    path consumes a waiting twin instead of applying. Twins that never come (a push lost in an outage,
    or one of a revocation older than this node's start) expire, the feed's early: pushes trail the
    feed by milliseconds, the feed trails pushes by up to one feed period.
    """

    def __init__(self, feed_waits: float, push_waits: float) -> None:
        self._ttl = {_FEED: feed_waits, _PUSH: push_waits}
        self._waiting: dict[tuple[Key, str], deque[float]] = {}

    def first(self, key: Key, path: str, now: float) -> bool:
        """True if this arrival is the revocation's first (apply it); False if it is the twin of one applied."""
        twin = (key, _FEED if path == _PUSH else _PUSH)
        deadlines = self._waiting.get(twin)
        if deadlines:
            deadlines.popleft()
            if not deadlines:
                del self._waiting[twin]
            return False
        self._waiting.setdefault((key, path), deque()).append(now + self._ttl[path])
        return True

    def expire(self, now: float) -> None:
        """Forget arrivals whose twin is overdue."""
        for entry, deadlines in list(self._waiting.items()):
            while deadlines and deadlines[0] <= now:
                deadlines.popleft()
            if not deadlines:
                del self._waiting[entry]


async def _close_quietly(pubsub: PubSub) -> None:
    try:
        await pubsub.aclose()
    except Exception:  # already broken; nothing left to release
        pass
