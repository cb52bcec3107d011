"""Broadcast fan-out without a task per recipient, on one node and across a cluster.

python-socketio's ``AsyncManager.emit`` encodes a broadcast once but then creates one asyncio
task per recipient and waits for them all; with a channel of 1000 members that is 1000 task
creations and ~3000 loop callbacks per message. HQ encodes each broadcast once, as the final
Engine.IO text and as one WebSocket frame, and hands it to each recipient's
:class:`~hq.realtime.engine.LeanSocket` in a plain loop: on a websocket that is one ``transport.write`` of
the same bytes (no queue, no writer task, no await), on long-polling a queue entry.

``AsyncServer.emit`` always passes ``ignore_queue`` to the manager, and the Redis manager's own
``_handle_emit`` (the delivery of every cluster broadcast, this node's included) calls
``AsyncManager.emit`` past any override of ``emit``: both are taken over here, and
tests/test_fanout.py fails if a broadcast to 100 members creates a task or reaches the fallback.

Relies on ``BaseManager.get_participants(namespace, room)``, ``AsyncPubSubManager._handle_emit``'s
message shape and ``server.packet_class``; the python-socketio range is pinned in pyproject.toml.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import socketio
from engineio import packet as eio_packet
from socketio import packet

from ..cluster.redis import Outage
from .engine import LeanSocket, websocket_text_frame
from .sequencer import ChannelSequencer
from ..store import Store
from ..tasks import BackgroundTasks

log = logging.getLogger(__name__)


class DirectFanout:
    """Mixin for a python-socketio async manager: broadcasts without per-recipient tasks."""

    server: Any
    rooms: Any
    get_participants: Any  # BaseManager's

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
        recipients = [eio_sid for sid, eio_sid in self.get_participants(namespace, room) if sid not in skip]
        if not recipients:
            return  # nothing to encode
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


class LocalManager(DirectFanout, socketio.AsyncManager):
    """The single-node manager."""


class RedisManager(DirectFanout, socketio.AsyncRedisManager):
    """The cluster manager: python-socketio's Redis pub/sub, with direct local fan-out.

    A broadcast is delivered on this node first and then published to Redis for the others
    (python-socketio's order). Channel messages pass a :class:`~hq.realtime.sequencer.ChannelSequencer`,
    so that every node delivers them once and in id order, and reads from the store what Redis
    did not bring. While Redis does not answer, publishing is skipped for a second at a time
    (an ack never waits for it; one warning per outage): the other nodes catch up from the store.

    This manager still makes its own Redis connections from ``url`` (python-socketio's
    ``AsyncRedisManager`` builds its client itself): the one exception to HQ's one Redis client per
    process (:func:`hq.cluster.redis.redis_client`), until issue 18 replaces this manager. Its
    ``host_id`` is the process's node id (:mod:`hq.cluster.node`), as everywhere else.
    """

    PUBLISH_PAUSE = 1.0

    def __init__(self, url: str, *, channel: str, store: Store, room_of: Callable[[str], str],
                 node: str | None = None, tasks: BackgroundTasks | None = None) -> None:
        # Short timeouts: a hung Redis must not hold an ack (publish) for long.
        super().__init__(url, channel=channel, redis_options={"socket_timeout": 1.0, "socket_connect_timeout": 1.0})
        if node is not None:
            self.host_id = node  # marks this node's own publications, which it has delivered already
        self.sequencer = ChannelSequencer(store, self._deliver_message, tasks=tasks)
        self._room_of = room_of
        self._publish_paused_until = 0.0
        self._publishing = Outage(log, "cannot publish to Redis (%s); other nodes catch up from the store",
                                  "publishing to Redis again")

    def channel_joined(self, channel: str, last_id: int) -> None:
        """Start owing this node's members ``channel``'s messages after ``last_id``."""
        self.sequencer.joined(channel, last_id)

    def start(self) -> None:
        """Start the catch-up from the store."""
        self.sequencer.start()

    async def stop(self) -> None:
        """Stop the catch-up."""
        await self.sequencer.stop()

    async def emit(self, event: str, data: Any, namespace: str, room: Any = None, skip_sid: Any = None,
                   callback: Any = None, to: Any = None, ignore_queue: bool = False, **kwargs: Any) -> None:
        """Publish to every node, or with ``ignore_queue`` deliver on this one only (directly)."""
        if ignore_queue or callback is not None or kwargs:
            await super().emit(event, data, namespace, room=room, skip_sid=skip_sid, callback=callback,
                               to=to, ignore_queue=ignore_queue, **kwargs)
            return
        await socketio.AsyncRedisManager.emit(self, event, data, namespace=namespace, room=room,
                                              skip_sid=skip_sid, to=to)

    async def _handle_emit(self, message: dict[str, Any]) -> None:
        if message.get("callback") is not None or message.get("binary"):
            await super()._handle_emit(message)
            return
        data = message["data"]
        if isinstance(data, list):  # as python-socketio publishes it: one argument or a tuple
            data = data[0] if len(data) == 1 else tuple(data)
        if message["event"] == "message" and _is_channel_message(data) and (message.get("namespace") or "/") == "/":
            await self.sequencer.offer(data, message.get("skip_sid"))
            return
        await self.deliver(message["event"], data, message.get("namespace"), message.get("room"),
                           message.get("skip_sid"))

    async def _deliver_message(self, message: dict[str, Any], skip_sid: Any) -> None:
        await self.deliver("message", message, "/", self._room_of(message["channel"]), skip_sid)

    async def _publish(self, data: Any) -> None:
        now = time.monotonic()
        if now < self._publish_paused_until:
            return
        try:
            if not self.connected:
                self._redis_connect()
            await self.redis.publish(self.channel, self.json.dumps(data))
        except Exception as exc:  # redis-py's connection and timeout errors, whatever their class
            self.connected = False
            self._publish_paused_until = now + self.PUBLISH_PAUSE
            self._publishing.failed(exc)
            return
        self._publishing.answered()


def _is_channel_message(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("channel"), str) and type(data.get("id")) is int
