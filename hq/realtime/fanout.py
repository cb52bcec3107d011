"""Broadcast fan-out without a task per recipient, on one node and across a cluster.

python-socketio's ``AsyncManager.emit`` encodes a broadcast once but then creates one asyncio
task per recipient and waits for them all; with a channel of 1000 members that is 1000 task
creations and ~3000 loop callbacks per message. HQ encodes each broadcast once, as the final
Engine.IO text and as one WebSocket frame, and hands it to each recipient's
:class:`~hq.realtime.engine.LeanSocket` in a plain loop: on a websocket that is one ``transport.write`` of
the same bytes (no queue, no writer task, no await), on long-polling a queue entry.

The room table is python-socketio's, and it is the one membership table of the node for every
transport: a plain WebSocket (hq/realtime/plainws/) enters the same rooms as a
:class:`DirectMember` filed under its own socket id. A broadcast is then one :class:`Broadcast`
that each transport encodes at most once, on first need (``42["message",{...}]`` for Socket.IO,
``{"type":"message",...}`` for plain sockets), whatever mix of members a room has; a channel's
routing between nodes (below) counts both kinds of member, as both sit in the same room.

In a cluster, :class:`ClusterManager` routes each room's broadcasts to the nodes with a member in
it (hq/cluster/routing.py) and delivers what it receives the same direct way;
tests/test_fanout.py fails if a broadcast to 100 members creates a task or reaches the fallback.

Relies on ``BaseManager.get_participants(namespace, room)``, ``basic_enter_room`` /
``basic_leave_room`` (every way into and out of a room passes them) and ``server.packet_class``;
the python-socketio range is pinned in pyproject.toml.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Protocol

import socketio
from engineio import packet as eio_packet
from socketio import packet

from ..clock import Clock
from ..cluster.routing import TopicBus
from ..errors import describe
from .engine import LeanSocket, websocket_text_frame
from .sequencer import CATCH_UP, ChannelSequencer
from ..store import Store
from ..tasks import BackgroundTasks

log = logging.getLogger(__name__)


class Broadcast:
    """One event for many recipients, encoded at most once per wire format, when first needed."""

    __slots__ = ("event", "data", "_encoded")

    def __init__(self, event: str, data: Any) -> None:
        self.event = event
        self.data = data
        self._encoded: dict[Callable[[str, Any], Any], Any] = {}

    def encoded(self, encode: Callable[[str, Any], Any]) -> Any:
        """``encode(event, data)``, computed for the first recipient that asks and reused after."""
        value = self._encoded.get(encode)
        if value is None:
            value = self._encoded[encode] = encode(self.event, self.data)
        return value


class DirectMember(Protocol):
    """A room member that is not a Socket.IO socket (a plain WebSocket), written to directly."""

    def write_broadcast(self, broadcast: Broadcast) -> bool:
        """Write ``broadcast`` now without waiting; False if it must go :meth:`send_broadcast`'s way."""

    async def send_broadcast(self, broadcast: Broadcast) -> None:
        """Write ``broadcast`` where that needs a wait (a compressed WebSocket)."""


class DirectFanout:
    """Mixin for a python-socketio async manager: broadcasts without per-recipient tasks.

    Rooms also hold :class:`DirectMember` s (:meth:`enter_direct`): they are filed in the room
    table under their own socket id as their "Engine.IO id" (python-socketio's rooms map a socket
    id to one), which no Engine.IO socket has, so the delivery loop tells the two kinds apart.
    """

    server: Any
    rooms: Any
    get_participants: Any  # BaseManager's
    enter_room: Any
    leave_room: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The plain WebSockets of this node that are in a room, by socket id.
        self.direct_members: dict[str, DirectMember] = {}

    async def enter_direct(self, socket_id: str, room: str, member: DirectMember) -> None:
        """Put a direct member in ``room`` of HQ's namespace (as ``enter_room`` does a Socket.IO socket)."""
        self.direct_members[socket_id] = member
        await self.enter_room(socket_id, "/", room, eio_sid=socket_id)

    async def leave_direct(self, socket_id: str, room: str) -> None:
        """Take a direct member out of ``room``."""
        await self.leave_room(socket_id, "/", room)

    def forget_direct(self, socket_id: str) -> None:
        """The direct member is gone (call after it left its rooms)."""
        self.direct_members.pop(socket_id, None)

    def channel_joined(self, channel: str, last_id: int) -> None:
        """A member of this node joined ``channel`` whose last stored id was ``last_id``."""

    def start(self) -> None:
        """Start background work (the cluster's catch-up)."""

    async def stop(self) -> None:
        """Stop background work."""

    async def emit(self, event: str, data: Any, namespace: str, room: Any = None, skip_sid: Any = None,
                   callback: Any = None, to: Any = None, ignore_queue: bool = False, **kwargs: Any) -> None:
        """Deliver ``event`` to this node's members of ``room`` (python-socketio's signature)."""
        if callback is not None or kwargs:
            await super().emit(event, data, namespace, room=room, skip_sid=skip_sid,  # type: ignore[misc]
                               callback=callback, to=to, ignore_queue=ignore_queue, **kwargs)
            return
        await self.deliver(event, data, namespace, to or room, skip_sid)

    async def deliver(self, event: str, data: Any, namespace: str | None, room: Any, skip_sid: Any) -> None:
        """The direct path: encode once, write to each local recipient in a plain loop."""
        namespace = namespace or "/"
        if namespace not in self.rooms:
            return
        skip = set(skip_sid) if isinstance(skip_sid, list) else {skip_sid}
        participants = [(sid, eio_sid) for sid, eio_sid in self.get_participants(namespace, room) if sid not in skip]
        if not participants:
            return  # nothing to encode
        direct = self.direct_members
        recipients = [eio_sid for sid, eio_sid in participants if sid not in direct]
        if len(recipients) < len(participants):
            await self._deliver_direct(Broadcast(event, data), [direct[sid] for sid, _ in participants if sid in direct])
            if not recipients:
                return
        args = list(data) if isinstance(data, tuple) else ([] if data is None else [data])
        pkt = self.server.packet_class(packet.EVENT, namespace=namespace, data=[event, *args])
        if namespace == "/" and not pkt.data_is_binary(args):
            # What socketio.packet would produce, in one step: type, then the JSON array.
            encoded: Any = f"{packet.EVENT}{pkt.json.dumps(pkt.data, separators=(',', ':'))}"
        else:
            encoded = pkt.encode()
        if isinstance(encoded, list):  # binary attachments (HQ sends none): python-socketio's way
            await socketio.AsyncManager.emit(self, event, data, namespace, room=room,  # type: ignore[arg-type]
                                             skip_sid=skip_sid)
            return
        text = f"{eio_packet.MESSAGE}{encoded}"
        frame = websocket_text_frame(text)
        sockets = self.server.eio.sockets
        for eio_sid in recipients:
            socket = sockets.get(eio_sid)
            if isinstance(socket, LeanSocket):
                if not socket.send_frame(frame, text):
                    await socket.send_encoded(text)
            elif socket is not None:  # not adopted yet (mid-handshake): the ordinary way
                await socket.send(eio_packet.Packet(eio_packet.MESSAGE, encoded))


    @staticmethod
    async def _deliver_direct(broadcast: Broadcast, members: list[DirectMember]) -> None:
        """Each direct member gets the broadcast, encoded once for all of them, in a plain loop."""
        for member in members:
            if not member.write_broadcast(broadcast):
                await member.send_broadcast(broadcast)


class LocalManager(DirectFanout, socketio.AsyncManager):
    """The single-node manager."""


class ClusterManager(DirectFanout, socketio.AsyncManager):
    """The cluster manager: each room's broadcasts reach the nodes with a member in it, and only those.

    A room that gets its first local member makes this node want the room's topic on the
    :class:`~hq.cluster.routing.TopicBus` (``<prefix>:room:<namespace>#<room>``; the namespace's
    topic ``<prefix>:namespace:<namespace>`` while a socket is connected to it); the room's last
    member leaving drops it. A broadcast is delivered on this node first (directly, as on a single
    node) and then published on its room's topic after the store's commit (the caller emits after
    it), so a node with no member in a channel receives nothing of it. Channel messages pass a
    :class:`~hq.realtime.sequencer.ChannelSequencer` so that every node delivers them once and in id order,
    and reads from the store what Redis did not bring (a gap, the channel's subscription coming back
    after an outage, the slow safety round).

    What is not carried between nodes: an emit with an ack callback, with binary data, and
    operations on another node's socket (``disconnect``, ``enter_room``, ``leave_room``): they act
    on this node's sockets only, as python-socketio's single-node manager does. HQ makes none of
    them across nodes (``session_ended`` and ``token_expiring`` go to a local socket; the Admin UI
    acts on the sockets of the node it is connected to, while its ``server_stats`` broadcasts reach
    the Admin UIs of every node through the ``/admin`` namespace's topic).
    """

    def __init__(self, bus: TopicBus, *, prefix: str, store: Store, room_of: Callable[[str], str],
                 tasks: BackgroundTasks | None = None, clock: Clock | None = None,
                 catch_up: float = CATCH_UP) -> None:
        super().__init__()
        self.bus = bus
        self.host_id = bus.node  # the Admin UI names this server by it
        self.sequencer = ChannelSequencer(store, self._deliver_message, tasks=tasks, clock=clock, catch_up=catch_up)
        self._tasks = tasks if tasks is not None else BackgroundTasks()
        self._prefix = prefix
        self._room_of = room_of
        self._channel_of_topic: dict[str, str] = {}
        bus.listen(self._received, self._subscribed, on_lost=self.sequencer.redis_lost,
                   on_back=self.sequencer.redis_back)

    def topic(self, namespace: str, room: Any) -> str:
        """The routing topic of ``room`` in ``namespace`` (None: the whole namespace)."""
        if room is None:
            return f"{self._prefix}:namespace:{namespace}"
        return f"{self._prefix}:room:{namespace}#{room}"

    def channel_joined(self, channel: str, last_id: int) -> None:
        """Start owing this node's members ``channel``'s messages after ``last_id``."""
        self._channel_of_topic[self.topic("/", self._room_of(channel))] = channel
        self.sequencer.joined(channel, last_id)

    def start(self) -> None:
        """Start following the wanted topics and the safety rounds."""
        self.bus.start()
        self.sequencer.start()

    async def stop(self) -> None:
        """Stop both."""
        await self.sequencer.stop()
        await self.bus.stop()

    # rooms: what this node wants ---------------------------------------------------------------
    def basic_enter_room(self, sid: str, namespace: str, room: Any, eio_sid: Any = None) -> None:
        """python-socketio's, and the room's topic is wanted from its first local member on."""
        first = room not in self.rooms.get(namespace, {})
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        if first and room != sid:  # a socket's own room is never routed: it lives on this node only
            self.bus.want(self.topic(namespace, room))

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        """python-socketio's, and the room's topic is dropped with its last local member."""
        present = room in self.rooms.get(namespace, {})
        super().basic_leave_room(sid, namespace, room)
        if present and room != sid and room not in self.rooms.get(namespace, {}):
            topic = self.topic(namespace, room)
            self.bus.drop(topic)
            channel = self._channel_of_topic.pop(topic, None)
            if channel is not None:
                self.sequencer.forget(channel)

    async def enter_room(self, sid: str, namespace: str, room: Any, eio_sid: Any = None) -> None:
        """Enter the room, and wait (briefly) until Redis routes its messages here.

        A join reads the channel's last id after this: any message stored later is published after
        the subscription, so it is received; one published before it is at most that last id.
        """
        self.basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        if room is not None and room != sid:
            await self.bus.ready(self.topic(namespace, room))

    # broadcasting ------------------------------------------------------------------------------
    async def emit(self, event: str, data: Any, namespace: str, room: Any = None, skip_sid: Any = None,
                   callback: Any = None, to: Any = None, ignore_queue: bool = False, **kwargs: Any) -> None:
        """Deliver on this node, then publish to the nodes with members in the room."""
        room = to if to is not None else room
        namespace = namespace or "/"
        if callback is not None or kwargs or ignore_queue or self.is_sid_room(namespace, room):
            # A socket of this node, or what is not carried between nodes (see the class's docstring).
            await super().emit(event, data, namespace, room=room, skip_sid=skip_sid, callback=callback,
                               ignore_queue=ignore_queue, **kwargs)
            return
        args = list(data) if isinstance(data, tuple) else [data]
        if packet.Packet.data_is_binary(args):
            log.warning("a broadcast of %r with binary data was delivered on this node only", event)
            await self.deliver(event, data, namespace, room, skip_sid)
            return
        await self._handle(event, data, namespace, room, skip_sid)
        body = self.server.packet_class.json.dumps({"event": event, "namespace": namespace, "room": room,
                                                   "data": args})
        # A channel message is sent again after a failed publish (members drop a duplicate by its id);
        # anything else (presence) is news only when it is fresh, and is not.
        await self.bus.publish(self.topic(namespace, room), body.encode() if isinstance(body, str) else body,
                               resend=event == "message" and namespace == "/" and _is_channel_message(data))

    async def _handle(self, event: str, data: Any, namespace: str, room: Any, skip_sid: Any) -> None:
        if room not in self.rooms.get(namespace, {}):
            return  # no member here (a sender outside the channel, a topic dropped meanwhile)
        if event == "message" and namespace == "/" and _is_channel_message(data):
            await self.sequencer.offer(data, skip_sid)
        else:
            await self.deliver(event, data, namespace, room, skip_sid)

    async def _received(self, topic: str, body: bytes) -> None:
        """A broadcast another node published on a topic this node wants."""
        try:
            message = self.server.packet_class.json.loads(body)
            event, namespace, room, args = message["event"], message["namespace"], message["room"], message["data"]
            if not isinstance(args, list) or not isinstance(event, str) or not isinstance(namespace, str):
                raise TypeError("event, namespace or data of the wrong type")
        except (ValueError, KeyError, TypeError) as error:
            log.warning("ignored a malformed broadcast on %s (%s)", topic, describe(error))
            return
        await self._handle(event, args[0] if len(args) == 1 else tuple(args), namespace, room, None)

    def _subscribed(self, topic: str) -> None:
        """Redis routes ``topic`` here (again): what it did not bring meanwhile is in the store."""
        channel = self._channel_of_topic.get(topic)
        if channel is not None and self.sequencer.following(channel):
            self._tasks.spawn(self.sequencer.catch_up(channel), name=f"catch-up-{channel}")

    async def _deliver_message(self, message: dict[str, Any], skip_sid: Any) -> None:
        await self.deliver("message", message, "/", self._room_of(message["channel"]), skip_sid)


def _is_channel_message(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("channel"), str) and type(data.get("id")) is int
