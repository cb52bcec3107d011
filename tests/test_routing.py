"""Routing between nodes (hq/cluster/routing.py, hq/realtime/fanout.py ``ClusterManager``), in-process over
real Redis: a node receives a channel's messages only while it has a member in it, a member node delivers
each once and in order, and what was published while Redis was away comes from the store once it is back.

Each "node" is a real SocketServer with a ClusterManager and its own TopicBus on a client of its own
(in production one per process), with lean sockets in rooms, as tests/test_fanout.py builds them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from engineio.async_socket import AsyncSocket

from hq.clock import ManualClock
from hq.cluster.redis import redis_client
from hq.cluster.routing import TopicBus
from hq.realtime.engine import LeanSocket, ProtocolFaults
from hq.realtime.fanout import ClusterManager
from hq.realtime.realtime import channel_room
from hq.realtime.socket_server import SocketServer
from hq.tasks import BackgroundTasks

from .services import REDIS_URL, PrivateRedis
from .test_sequencer import Store


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait until ``condition()`` holds (checked every 10 ms), failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


class Node:
    """One in-process node: a SocketServer whose ClusterManager routes through Redis at ``url``."""

    def __init__(self, url: str, prefix: str, store: Store, clock: ManualClock | None = None) -> None:
        self.redis: aioredis.Redis = redis_client(url)
        self.tasks = BackgroundTasks()
        self.bus = TopicBus(self.redis, prefix, f"node-{uuid.uuid4().hex[:6]}")
        self.manager = ClusterManager(self.bus, prefix=prefix, store=store, room_of=channel_room,  # type: ignore[arg-type]
                                      tasks=self.tasks, clock=clock)
        self.store = store
        self.sio = SocketServer(client_events=frozenset({"message"}), faults=ProtocolFaults(),
                                client_manager=self.manager, async_mode="aiohttp")
        self.sockets: dict[str, list[LeanSocket]] = {}
        self._seen: dict[str, list[int]] = {}  # eio sid → ids written to that socket so far
        self.handled: list[str] = []  # the topic of every message the manager was handed from Redis
        received = self.manager._received

        async def counting(topic: str, body: bytes) -> None:
            self.handled.append(topic)
            await received(topic, body)
        self.manager._received = counting  # type: ignore[method-assign]
        self.bus.listen(counting, self.manager._subscribed, on_lost=self.manager.sequencer.redis_lost,
                        on_back=self.manager.sequencer.redis_back)

    async def start(self) -> "Node":
        self.sio.manager.initialize()
        self.manager.start()
        await until(lambda: self.bus.subscribed, "the node's subscription")
        return self

    async def join(self, channel: str, members: int = 1) -> None:
        """``members`` sockets join ``channel`` as Realtime's join does (room, then the last id)."""
        for _ in range(members):
            eio_sid = f"eio-{uuid.uuid4().hex[:8]}"
            socket = LeanSocket.adopt(AsyncSocket(self.sio.eio, eio_sid))
            socket.connected = True
            self.sio.eio.sockets[eio_sid] = socket
            sid = await self.manager.connect(eio_sid, "/")
            await self.sio.enter_room(sid, channel_room(channel))
            self.manager.channel_joined(channel, await self.store.last_message_id(channel))
            self.sockets.setdefault(channel, []).append(socket)

    async def send(self, channel: str, text: str) -> int:
        """Store a message and emit it, as Realtime's message handler does."""
        message = self.store.add(channel, text)
        await self.sio.emit("message", message, room=channel_room(channel))
        return int(message["id"])

    def ids(self, channel: str) -> list[list[int]]:
        """The message ids written so far to each member of ``channel`` on this node, in order."""
        received = []
        for socket in self.sockets.get(channel, []):
            seen = self._seen.setdefault(socket.sid, [])
            while not socket.queue.empty():
                packet = socket.queue.get_nowait().encode()
                seen.append(int(packet.split('"id":')[1].split(",")[0].rstrip("}]")))
            received.append(list(seen))
        return received

    async def close(self) -> None:
        await self.manager.stop()
        await self.tasks.close()
        await self.redis.aclose()


NodeFactory = Callable[..., Awaitable[Node]]


@pytest.fixture
async def nodes() -> AsyncIterator[NodeFactory]:
    """Start nodes on one Redis (the machine's, or ``url=``) under a prefix of this test's own."""
    prefix = f"hq-test-{uuid.uuid4().hex[:8]}"
    store = Store()
    started: list[Node] = []

    async def start(url: str = REDIS_URL, clock: ManualClock | None = None) -> Node:
        node = await Node(url, prefix, store, clock).start()
        started.append(node)
        return node
    yield start
    for node in started:
        await node.close()


async def test_a_node_without_members_receives_nothing_of_the_channel(nodes: NodeFactory) -> None:
    sender, bystander, member = await nodes(), await nodes(), await nodes()
    await sender.join("missions")  # the sender node has a member too, so it publishes to a live topic
    await bystander.join("hq")  # members elsewhere only
    await member.join("missions", members=3)
    ids = [await sender.send("missions", f"m{n}") for n in range(100)]
    await sender.send("hq", "after")  # Redis serves publications in order: once this arrives, all did
    await until(lambda: bystander.handled != [], "the bystander's message in its own channel")
    assert bystander.handled == [bystander.manager.topic("/", "channel:hq")]  # nothing of "missions"
    assert bystander.bus.received == 1
    await until(lambda: len(member.handled) == 100, "the member node's 100 messages")
    assert member.ids("missions") == [ids] * 3  # every message once, in id order, to each member
    assert sender.ids("missions") == [ids]  # delivered on its own node directly, not again from Redis
    assert sender.handled == []


async def test_the_last_member_leaving_stops_the_channel_at_once(nodes: NodeFactory) -> None:
    sender, member = await nodes(), await nodes()
    await member.join("missions")
    await sender.send("missions", "while a member")
    await until(lambda: len(member.handled) == 1, "the first message")
    (socket_id, _), = member.manager.get_participants("/", channel_room("missions"))
    await member.sio.leave_room(socket_id, channel_room("missions"))
    assert not member.bus.wanted(member.manager.topic("/", "channel:missions"))
    await member.join("hq")
    for n in range(20):
        await sender.send("missions", f"after {n}")
    await sender.send("hq", "marker")
    await until(lambda: len(member.handled) == 2, "the marker")
    assert member.handled[-1] == member.manager.topic("/", "channel:hq")  # the 20 never reached it


async def test_a_message_published_while_redis_was_away_comes_from_the_store_once_it_is_back(
        nodes: NodeFactory, private_redis: PrivateRedis) -> None:
    clock = ManualClock(start=1_000_000.0)  # the member's safety rounds never run by themselves here
    sender, member = await nodes(private_redis.url), await nodes(private_redis.url, clock=clock)
    await member.join("missions")
    first = await sender.send("missions", "before")
    await until(lambda: member.ids("missions") == [[first]], "the message sent before the outage")

    private_redis.kill()
    await until(lambda: not member.bus.subscribed, "the member node to notice the outage")
    during = [await sender.send("missions", f"during {n}") for n in range(3)]  # publishing fails quietly
    assert member.ids("missions") == [[first]]
    assert member.manager.sequencer.round_interval == 1.0  # it would read the store every second meanwhile

    private_redis.start()  # empty: the subscription is made anew, and the channel caught up from the store
    await until(lambda: member.bus.subscribed, "the subscription to come back", timeout=15)
    await until(lambda: member.ids("missions") == [[first, *during]], "the messages of the outage")
    assert member.manager.sequencer.round_interval == 30.0
    # The sender's publisher may still rest (its breaker's second) and skip this one; the member's one
    # settling round, two seconds after its subscription came back, reads it from the store.
    skipped = await sender.send("missions", "maybe skipped")
    clock.advance(2.0)
    await until(lambda: member.ids("missions") == [[first, *during, skipped]], "a message right after the outage")
    await until(lambda: sender.bus._publisher.resting is False, "the sender's publisher to try again")
    after = await sender.send("missions", "after")  # through Redis: the member's clock stays put
    await until(lambda: member.ids("missions") == [[first, *during, skipped, after]], "the message after it")


async def test_a_join_waits_for_its_subscription_so_nothing_after_its_last_id_is_missed(
        nodes: NodeFactory) -> None:
    """Realtime's join reads the channel's last id once ``enter_room`` returns: by then Redis routes the
    channel here, so every message stored after that id is published to a subscribed node."""
    clock = ManualClock(start=1_000_000.0)  # no safety round: a missed message would stay missed
    sender, member = await nodes(), await nodes(clock=clock)
    for number in range(10):
        channel = f"c{number}"
        await member.join(channel)  # the first member on its node: the channel's topic is subscribed now
        assert member.bus.confirmed(member.manager.topic("/", channel_room(channel)))
        sent = await sender.send(channel, "right after the join")
        await until(lambda: member.ids(channel) == [[sent]], f"the message sent right after joining {channel}")


async def test_publishing_shares_round_trips_and_holds_no_pool_connection_per_message(
        nodes: NodeFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """150 messages in flight at once (more than redis-py's 100 pooled connections) are published in a
    few pipelines over one connection; every member receives every one, in order."""
    sender, member = await nodes(), await nodes()
    await member.join("missions")
    from hq.cluster import routing
    pipelines: list[int] = []
    send_all = routing._publish_all

    async def counting(redis: aioredis.Redis, batch: list[tuple[str, bytes, bool]]) -> list[int]:
        pipelines.append(len(batch))
        return await send_all(redis, batch)
    monkeypatch.setattr(routing, "_publish_all", counting)
    sent = await asyncio.gather(*(sender.send("missions", f"m{n}") for n in range(150)))
    await until(lambda: member.ids("missions") == [sorted(sent)], "all 150 messages on the member")
    assert sum(pipelines) == 150 and len(pipelines) <= 3, pipelines
    pool = sender.redis.connection_pool
    # Every connection the sender's pool ever opened is idle or in use now: one publisher, one pubsub.
    assert len(pool._available_connections) + len(pool._in_use_connections) <= 2
    assert sender.bus.dropped == 0


async def test_a_failed_publish_is_sent_again_not_left_to_the_safety_round(
        nodes: NodeFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A publish Redis refuses while every subscription stays up (no outage the members could notice)
    is sent again once the publisher has rested: the member receives it without reading the store."""
    clock = ManualClock(start=1_000_000.0)  # the member's safety round never runs by itself
    sender, member = await nodes(), await nodes(clock=clock)
    await member.join("missions")
    from hq.cluster import routing
    send_all = routing._publish_all
    failures = [ConnectionError("refused once")]

    async def failing_once(redis: aioredis.Redis, batch: list[tuple[str, bytes, bool]]) -> list[int]:
        if failures:
            raise failures.pop()
        return await send_all(redis, batch)
    monkeypatch.setattr(routing, "_publish_all", failing_once)
    sender.bus._publisher.pause = 0.05  # the breaker's rest, short for the test
    reads_before = len(member.store.queries)
    last = await sender.send("missions", "the last message of a quiet channel")
    await until(lambda: member.ids("missions") == [[last]], "the message sent again")
    assert not failures and sender.bus.unsent == 0
    assert len(member.store.queries) == reads_before, "it came through Redis, not from the store"
