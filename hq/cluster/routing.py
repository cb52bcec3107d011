"""Per-topic routing between nodes: Redis pub/sub on exactly the topics this node has a use for.

A node of a cluster must receive the messages of a channel only while it has a member in that
channel. :class:`TopicBus` keeps one pub/sub connection (from the process's one Redis client,
:func:`hq.cluster.redis.redis_client`) subscribed to the topics its owner *wants* (the fan-out wants
a room's topic while a local socket is in the room) and to this node's own topic
(``<prefix>:node:<node>``), which keeps the connection up and answering PINGs when the node wants
nothing else. A topic is subscribed when it is first wanted and unsubscribed when it is dropped;
Redis then sends a node nothing for a topic it does not want: a node with no member in a channel
spends nothing on that channel's messages.

Plain pub/sub is fire-and-forget (delivered to those subscribed at that moment, at most once); the
owner keeps the truth elsewhere (the store) and is told what it may have missed (see
:meth:`TopicBus.listen`): when the subscription breaks (an outage: one warning) and when it is
back, and every subscription Redis confirms, a topic's first and every one after a reconnection.

Every payload is framed as ``<node>\\n<body>``: a node subscribed to a topic it publishes on skips
its own messages (it delivered them locally already) without parsing them.

Publishing never holds up the caller (an acknowledgement does not wait on Redis): :meth:`TopicBus.publish`
queues, and one task sends what is queued in one pipeline per round trip, in order, over one pooled
connection. Under load many messages share a round trip (the group commit hands them over together),
and a node never needs more Redis connections than it has publishers: one (with a publish per message,
100 messages in flight exhausted redis-py's pool of 100 connections, and the messages whose publish
failed reached other nodes only at their next safety round). What a failed batch held is sent again
once the :class:`~hq.cluster.redis.RedisBreaker` has rested (one warning per outage) if it was
published with ``resend`` (a channel message, which receivers take once by its id), and dropped
otherwise, as is what is published without it while Redis is away (a stale presence change is no news); while Redis stays away the queue keeps at most
:data:`OUTBOX_LIMIT` messages, the oldest dropped first — the nodes that miss them read them from
the store when their subscription comes back.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Awaitable, Callable

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from .redis import REDIS_DEADLINE, Outage, RedisBreaker, pubsub_messages

log = logging.getLogger(__name__)

#: ``on_message(topic, body)``: a message another node published on a wanted topic.
MessageHandler = Callable[[str, bytes], Awaitable[None]]
#: ``on_subscribed(topic)``: Redis confirmed the subscription of ``topic`` (first or again).
SubscribedHandler = Callable[[str], None]

#: Waits between attempts to subscribe again while Redis is away, doubling up to the maximum.
RESUBSCRIBE_FIRST, RESUBSCRIBE_MAX = 0.1, 2.0
#: Publications sent in one pipeline (one round trip) at the most.
PUBLISH_BATCH = 512
#: Publications kept while Redis is away; past this the oldest are dropped (the store has them).
OUTBOX_LIMIT = 10_000


class TopicBus:
    """Redis pub/sub on the topics wanted by this node, over the process's Redis client.

    Call :meth:`start` and :meth:`stop` around the node's life; :meth:`want` and :meth:`drop` never
    wait and never raise (a change is sent to Redis in the background, or on the next connection).
    """

    def __init__(self, client: aioredis.Redis, prefix: str, node: str) -> None:
        self.node = node
        self.node_topic = f"{prefix}:node:{node}"
        #: Messages received from other nodes (for tests and measurements).
        self.received = 0
        self._redis = client
        self._frame = f"{node}\n".encode()
        self._wanted: set[str] = set()
        self._confirmed: set[str] = set()  # on the current connection
        self._requested: set[str] = set()  # asked of the current connection (the node's topic aside)
        self._waiting: dict[str, list[asyncio.Future[bool]]] = {}
        self._pubsub: PubSub | None = None
        self._changing = asyncio.Lock()
        self._changes: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._on_message: MessageHandler | None = None
        self._on_subscribed: SubscribedHandler | None = None
        self._on_lost: Callable[[], None] | None = None
        self._on_back: Callable[[], None] | None = None
        self._following = Outage(log, "cluster routing: the Redis subscription is lost (%s); other nodes' "
                                 "messages come from the store until it is back", "cluster routing: subscribed again")
        publishing = Outage(log, "cluster routing: cannot publish to Redis (%s); other nodes catch up from the "
                            "store", "cluster routing: publishing to Redis again")
        self._publisher = RedisBreaker(client, publishing)
        self._outbox: deque[tuple[str, bytes, bool]] = deque()
        self._outbox_filled = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        #: Publications dropped because the queue was full during an outage (for tests and measurements).
        self.dropped = 0

    def listen(self, on_message: MessageHandler, on_subscribed: SubscribedHandler, *,
               on_lost: Callable[[], None], on_back: Callable[[], None]) -> None:
        """Where received messages and confirmed subscriptions are reported, and the subscription
        being lost (once per outage) and back (before the confirmations of the topics it brings back)."""
        self._on_message, self._on_subscribed = on_message, on_subscribed
        self._on_lost, self._on_back = on_lost, on_back

    @property
    def subscribed(self) -> bool:
        """Whether the subscription is live (this node's own topic confirmed on the current connection)."""
        return self.node_topic in self._confirmed

    # what this node wants -----------------------------------------------------------------------
    def want(self, topic: str) -> None:
        """Receive ``topic``'s messages from now on (subscribed in the background)."""
        if topic not in self._wanted:
            self._wanted.add(topic)
            self._change()

    def drop(self, topic: str) -> None:
        """Stop receiving ``topic``'s messages (those already on their way are ignored)."""
        if topic in self._wanted:
            self._wanted.discard(topic)
            self._confirmed.discard(topic)
            self._change()

    def wanted(self, topic: str) -> bool:
        """Whether ``topic`` is wanted now."""
        return topic in self._wanted

    def confirmed(self, topic: str) -> bool:
        """Whether Redis confirmed ``topic``'s subscription on the current connection."""
        return topic in self._confirmed

    async def ready(self, topic: str, timeout: float = REDIS_DEADLINE) -> bool:
        """Wait until Redis confirmed ``topic``'s subscription; False at once while the subscription is
        down, or after ``timeout`` (a join never waits long on Redis)."""
        if topic in self._confirmed:
            return True
        if not self.subscribed or topic not in self._wanted:
            return False
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(topic, []).append(waiter)
        try:
            async with asyncio.timeout(timeout):
                return await waiter
        except TimeoutError:
            return False
        finally:
            waiters = self._waiting.get(topic)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiting[topic]

    def _change(self) -> None:
        if self._pubsub is not None and (self._changes is None or self._changes.done()):
            self._changes = asyncio.get_running_loop().create_task(self._send_changes(), name="routing-subscribe")

    async def _send_changes(self) -> None:
        """Bring the connection's subscriptions to what is wanted (the connection's reader sees the answers)."""
        async with self._changing:
            pubsub = self._pubsub
            if pubsub is None:
                return  # the next connection subscribes to everything wanted
            try:
                while self._requested != self._wanted:
                    added, removed = self._wanted - self._requested, self._requested - self._wanted
                    self._requested = set(self._wanted)
                    if added:
                        await pubsub.subscribe(*added)
                    if removed:
                        await pubsub.unsubscribe(*removed)
            except Exception as error:  # the reader notices the same failure and connects again
                log.debug("cluster routing: could not change subscriptions (%s)", error)

    # publishing ---------------------------------------------------------------------------------
    async def publish(self, topic: str, body: bytes, resend: bool = False) -> None:
        """Queue ``body`` for the nodes that want ``topic``; never waits on Redis, never raises.

        Sent in order by the publishing task; with ``resend`` sent again after a failed try (see the
        module's docstring)."""
        if not resend and self._publisher.resting:
            self.dropped += 1  # Redis was just found away: by the time it is back this is stale news
            return
        if len(self._outbox) >= OUTBOX_LIMIT:
            self._outbox.popleft()
            self.dropped += 1
        self._outbox.append((topic, self._frame + body, resend))
        self._outbox_filled.set()

    @property
    def unsent(self) -> int:
        """Publications queued and not yet taken by Redis."""
        return len(self._outbox)

    async def _send_forever(self) -> None:
        """Send what is queued, a pipeline at a time; a failed batch again after the breaker's rest."""
        while True:
            await self._outbox_filled.wait()
            self._outbox_filled.clear()
            while self._outbox:
                rest = self._publisher.seconds_until_retry()
                if rest:
                    await asyncio.sleep(rest)
                batch = [self._outbox.popleft() for _ in range(min(len(self._outbox), PUBLISH_BATCH))]
                if await self._publisher.ask(lambda redis: _publish_all(redis, batch)) is None:
                    # Not taken (or not known to be): in front again, for the next try. A batch that
                    # timed out may have reached Redis: receivers drop the duplicates by message id.
                    again = [publication for publication in batch if publication[2]]
                    room = OUTBOX_LIMIT - len(self._outbox)
                    kept = again[-room:] if room > 0 else []
                    self.dropped += len(batch) - len(kept)
                    self._outbox.extendleft(reversed(kept))

    async def _flush(self, timeout: float) -> None:
        """Give what is queued up to ``timeout`` seconds to reach Redis (at stop)."""
        try:
            async with asyncio.timeout(timeout):
                while self._outbox and not self._publisher.resting:
                    await asyncio.sleep(0.01)
        except TimeoutError:
            pass

    # receiving ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Start following (not awaited: a Redis that is down at start-up must not stop HQ)."""
        if self._task is None:
            self._task = asyncio.create_task(self._follow(), name="routing-follow")
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_forever(), name="routing-publish")
            if self._outbox:
                self._outbox_filled.set()

    async def stop(self) -> None:
        """Stop following and publishing, after giving what is queued a deadline to reach Redis (the
        Redis client is the process's: its owner closes it)."""
        if self._sender is not None:
            await self._flush(REDIS_DEADLINE)
        for task in (self._task, self._changes, self._sender):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._task = self._changes = self._sender = None

    async def _follow(self) -> None:
        wait = RESUBSCRIBE_FIRST
        while True:
            pubsub = self._redis.pubsub()
            try:
                await self._receive(pubsub)  # returns only by raising
            except Exception as error:  # refused, reset or silent: the owner catches up from the store
                was_live = self.subscribed
                self._lost()
                if self._following.failed(error) and self._on_lost is not None:
                    self._on_lost()
                if was_live:
                    wait = RESUBSCRIBE_FIRST
            finally:
                self._pubsub = None
                self._confirmed.clear()
                await asyncio.shield(_close_quietly(pubsub))
            await asyncio.sleep(wait)
            wait = min(wait * 2, RESUBSCRIBE_MAX)

    async def _receive(self, pubsub: PubSub) -> None:
        async with self._changing:
            self._requested = set(self._wanted)
            await pubsub.subscribe(self.node_topic, *self._requested)
            self._pubsub = pubsub
        if self._requested != self._wanted:  # wanted or dropped while the first SUBSCRIBE was on its way
            self._change()
        async for message in pubsub_messages(pubsub):
            kind = message["type"]
            if kind == "message":
                await self._received(message["channel"], message["data"])
            elif kind == "subscribe":
                self._confirm(_text(message["channel"]))

    async def _received(self, channel: bytes, data: bytes) -> None:
        if data.startswith(self._frame):
            return  # this node's own publication, delivered here already
        topic = _text(channel)
        if topic not in self._wanted and topic != self.node_topic:
            return  # dropped meanwhile; Redis has not seen the UNSUBSCRIBE yet
        self.received += 1
        _, _, body = data.partition(b"\n")
        if self._on_message is not None:
            try:
                await self._on_message(topic, body)
            except Exception:  # one bad message must not end the subscription
                log.exception("cluster routing: handling a message on %s failed", topic)

    def _confirm(self, topic: str) -> None:
        if topic != self.node_topic and topic not in self._wanted:
            return
        self._confirmed.add(topic)
        if topic == self.node_topic and self._following.answered() and self._on_back is not None:
            self._on_back()
        for waiter in self._waiting.pop(topic, []):
            if not waiter.done():
                waiter.set_result(True)
        if topic != self.node_topic and self._on_subscribed is not None:
            self._on_subscribed(topic)

    def _lost(self) -> None:
        self._confirmed.clear()
        for waiters in self._waiting.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(False)
        self._waiting.clear()


async def _publish_all(redis: aioredis.Redis, batch: list[tuple[str, bytes, bool]]) -> list[int]:
    """Every publication of ``batch`` in one pipeline: one round trip, one pooled connection."""
    async with redis.pipeline(transaction=False) as pipe:
        for topic, payload, _ in batch:
            pipe.publish(topic, payload)
        return await pipe.execute()


async def _close_quietly(pubsub: PubSub) -> None:
    try:
        await pubsub.aclose()
    except Exception:  # already broken; nothing left to release
        pass


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
