"""Direct fan-out: that it is taken (no task per recipient, no fallback), the internals it relies on,
and its behaviour over real sockets."""

from __future__ import annotations

import asyncio
import inspect
import json

import pytest
import socketio
from socketio.async_pubsub_manager import AsyncPubSubManager
from socketio.base_manager import BaseManager

from engineio.async_socket import AsyncSocket

from hq.realtime.engine import LeanSocket, ProtocolFaults
from hq.cluster.redis import redis_client
from hq.cluster.routing import TopicBus
from hq.realtime.fanout import ClusterManager, LocalManager
from hq.realtime.socket_server import SocketServer

from .sio import RecordingClient
from .support import HQServer


MEMBERS = 100


async def server_with_members(manager: socketio.AsyncManager) -> tuple[SocketServer, list[LeanSocket]]:
    """A real SocketServer whose room ``channel:x`` has 100 members on lean (polling) sockets."""
    sio = SocketServer(client_events=frozenset({"message"}), faults=ProtocolFaults(), client_manager=manager,
                       async_mode="aiohttp")
    sio.manager.initialize()
    sockets = []
    for number in range(MEMBERS):
        eio_sid = f"eio{number}"
        socket = LeanSocket.adopt(AsyncSocket(sio.eio, eio_sid))
        socket.connected = True
        sio.eio.sockets[eio_sid] = socket
        sid = await sio.manager.connect(eio_sid, "/")
        await sio.manager.enter_room(sid, "/", "channel:x")
        sockets.append(socket)
    return sio, sockets


class TaskCounter:
    """Counts every task created on the running loop (a task factory sees them all)."""

    def __init__(self) -> None:
        self.count = 0
        self.names: list[str] = []

    def __enter__(self) -> "TaskCounter":
        loop = asyncio.get_running_loop()
        self._previous = loop.get_task_factory()

        def factory(loop: asyncio.AbstractEventLoop, coro: object, **kwargs: object) -> asyncio.Task:
            self.count += 1
            self.names.append(getattr(coro, "__qualname__", repr(coro)))
            return asyncio.Task(coro, loop=loop, **kwargs)  # type: ignore[arg-type]
        loop.set_task_factory(factory)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.get_running_loop().set_task_factory(self._previous)


@pytest.fixture
def fallback(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Events that reached python-socketio's own ``AsyncManager.emit`` (a task per recipient)."""
    calls: list[str] = []
    original = socketio.AsyncManager.emit

    async def spy(self, event, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(event)
        return await original(self, event, *args, **kwargs)
    monkeypatch.setattr(socketio.AsyncManager, "emit", spy)
    return calls


async def test_a_broadcast_to_100_members_creates_no_task_and_skips_the_fallback(fallback: list[str]) -> None:
    sio, sockets = await server_with_members(LocalManager())
    skipped = sio.manager.sid_from_eio_sid("eio0", "/")
    with TaskCounter() as tasks:
        await sio.emit("message", {"id": 1, "text": "to all"}, room="channel:x", skip_sid=skipped)
    assert tasks.count == 0 and fallback == []
    assert sockets[0].queue.qsize() == 0
    for socket in sockets[1:]:
        assert socket.queue.get_nowait().encode() == '42["message",{"id":1,"text":"to all"}]'
    # The spy does see python-socketio's own path (so the zero above is not a blind spy).
    await socketio.AsyncManager.emit(sio.manager, "message", {"id": 2}, "/", room="channel:x")
    assert fallback == ["message"]


async def test_a_cluster_broadcast_is_delivered_directly_too(fallback: list[str], monkeypatch) -> None:
    # Nothing listens on port 9: this test needs no Redis (publishing is recorded instead).
    bus = TopicBus(redis_client("redis://127.0.0.1:9/0"), "hq-test", "this-node")
    published: list[tuple[str, dict]] = []

    async def publish(topic: str, body: bytes, resend: bool = False) -> None:
        published.append((topic, json.loads(body)))
    monkeypatch.setattr(bus, "publish", publish)
    manager = ClusterManager(bus, prefix="hq-test", store=None,  # type: ignore[arg-type]
                             room_of=lambda channel: f"channel:{channel}")
    sio, sockets = await server_with_members(manager)
    topic = "hq-test:room:/#channel:x"
    assert bus.wanted(topic) and bus.wanted("hq-test:namespace:/")  # the room's and the namespace's
    with TaskCounter() as tasks:
        await sio.emit("message", {"id": 1}, room="channel:x")  # this node's own broadcast
        await manager._received(topic, b'{"event":"message","namespace":"/","room":"channel:x","data":[{"id":2}]}')
    assert tasks.count == 0 and fallback == []
    assert published == [(topic, {"event": "message", "namespace": "/", "room": "channel:x", "data": [{"id": 1}]})]
    for socket in sockets:
        assert [socket.queue.get_nowait().encode() for _ in range(2)] == ['42["message",{"id":1}]',
                                                                          '42["message",{"id":2}]']
    # A socket's own room is never routed; the room's topic is dropped with its last local member.
    assert not any(bus.wanted(f"hq-test:room:/#{sid}") for sid, _ in manager.get_participants("/", None))
    for sid, _ in list(manager.get_participants("/", "channel:x")):
        await sio.leave_room(sid, "channel:x")
    assert not bus.wanted(topic) and bus.wanted("hq-test:namespace:/")


def test_the_internals_fanout_relies_on_are_still_there() -> None:
    assert "ignore_queue" in inspect.getsource(socketio.AsyncServer.emit)
    assert list(inspect.signature(BaseManager.get_participants).parameters) == ["self", "namespace", "room"]
    emit = inspect.signature(socketio.AsyncManager.emit)
    assert list(emit.parameters)[:8] == ["self", "event", "data", "namespace", "room", "skip_sid", "callback", "to"]
    # The cluster manager follows rooms through these two: every way into and out of a room passes them.
    assert list(inspect.signature(BaseManager.basic_enter_room).parameters) == ["self", "sid", "namespace", "room",
                                                                                 "eio_sid"]
    assert list(inspect.signature(BaseManager.basic_leave_room).parameters) == ["self", "sid", "namespace", "room"]
    assert "self.basic_enter_room(" in inspect.getsource(BaseManager.pre_connect)
    for way_out in (BaseManager.basic_disconnect, BaseManager.basic_close_room, socketio.AsyncManager.leave_room):
        assert "self.basic_leave_room(" in inspect.getsource(way_out)
    assert issubclass(LocalManager, socketio.AsyncManager) and issubclass(ClusterManager, socketio.AsyncManager)
    assert not issubclass(ClusterManager, AsyncPubSubManager)  # no all-to-all channel


async def test_broadcast_reaches_every_member_but_the_sender_in_order(shared_hq: HQServer) -> None:
    members = [await RecordingClient().connect(shared_hq.url, shared_hq.login(name)["access_token"])
               for name in ("fox", "hank", "dora", "fox")]
    for member in members:
        assert (await member.call("join", {"channel": "missions"}))["ok"]
    sender = members[1]
    acks = [await sender.call("message", {"channel": "missions", "text": f"n{i}"}) for i in range(20)]
    ids = [ack["id"] for ack in acks]
    for member in (members[0], members[2], members[3]):
        received = await member.wait_for("message", count=20)
        assert [m["id"] for m in received] == ids
    await asyncio.sleep(0.2)
    assert sender.received("message") == []
    for member in members:
        await member.close()
