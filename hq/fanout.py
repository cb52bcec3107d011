"""Broadcast fan-out without a task per recipient.

python-socketio's ``AsyncManager.emit`` encodes a broadcast once but then creates one asyncio
task per recipient and waits for them all; with a channel of 1000 members that is 1000 task
creations and ~3000 loop callbacks per message. Handing each recipient's Engine.IO socket the
already-encoded packet in a plain loop does the same work (the socket's own writer task still
does the network write) without the tasks.

This relies on two internals: ``AsyncServer._send_eio_packet(eio_sid, pkt)`` and
``BaseManager.get_participants(namespace, room)``. The python-socketio range is pinned in
pyproject.toml, and tests/test_fanout.py fails if either changes shape.
"""

from __future__ import annotations

from typing import Any

import socketio
from engineio import packet as eio_packet
from socketio import packet


class DirectFanout:
    """Mixin for a python-socketio async manager: broadcasts without per-recipient tasks."""

    server: Any

    async def emit(self, event: str, data: Any, namespace: str, room: Any = None, skip_sid: Any = None,
                   callback: Any = None, to: Any = None, **kwargs: Any) -> None:
        if callback is not None or kwargs:
            await super().emit(event, data, namespace, room=room, skip_sid=skip_sid,  # type: ignore[misc]
                               callback=callback, to=to, **kwargs)
            return
        room = to or room
        if namespace not in self.rooms:  # type: ignore[attr-defined]
            return
        args = list(data) if isinstance(data, tuple) else ([] if data is None else [data])
        skip = set(skip_sid) if isinstance(skip_sid, list) else {skip_sid}
        recipients = [eio_sid for sid, eio_sid in self.get_participants(namespace, room)  # type: ignore[attr-defined]
                      if sid not in skip]
        if not recipients:
            return
        encoded = self.server.packet_class(packet.EVENT, namespace=namespace, data=[event, *args]).encode()
        frames = [eio_packet.Packet(eio_packet.MESSAGE, p) for p in (encoded if isinstance(encoded, list) else [encoded])]
        for eio_sid in recipients:
            for frame in frames:
                await self.server._send_eio_packet(eio_sid, frame)


class LocalManager(DirectFanout, socketio.AsyncManager):
    """The single-node manager."""


class RedisManager(DirectFanout, socketio.AsyncRedisManager):
    """The cluster manager: python-socketio's Redis pub/sub, with direct local fan-out."""
