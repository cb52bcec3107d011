"""One plain WebSocket as a :class:`~hq.realtime.peers.Peer` of the shared events and a
:class:`~hq.realtime.fanout.DirectMember` of the node's rooms.

Writes go straight to the connection's transport as whole frames, as the Socket.IO lean path does
(hq/realtime/engine.py): no queue, no writer task; a broadcast's frame is encoded once for every
plain member of the room (:class:`~hq.realtime.fanout.Broadcast`). With per-message compression
negotiated, frames go through aiohttp's writer instead (its compressor keeps state per frame).
A reader that lets more than ``[server] max_buffered_bytes`` pile up is cut off (reported as a
``slow_consumer`` fault); it reconnects and catches up from history.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..engine import ProtocolFaults, websocket_text_frame, write_frame_capped
from ..fanout import Broadcast, DirectFanout
from ..peers import PLAIN_WEBSOCKET, Ack
from . import frames
from .frames import Close

if TYPE_CHECKING:
    from ...tasks import BackgroundTasks

log = logging.getLogger(__name__)


def new_socket_id() -> str:
    """A plain socket's id: never equal to a Socket.IO socket's (those have no ``ws-`` prefix)."""
    return f"ws-{secrets.token_urlsafe(15)}"


class PlainSocket:
    """A live plain WebSocket: the events' peer and the fan-out's direct member."""

    transport = PLAIN_WEBSOCKET

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport | None, rooms: DirectFanout,
                 faults: ProtocolFaults, tasks: BackgroundTasks, max_buffered_bytes: int) -> None:
        self.socket_id = new_socket_id()
        self._ws = ws
        self._rooms = rooms
        self._faults = faults
        self._tasks = tasks
        self._cap = max_buffered_bytes
        # Uncompressed frames are the same bytes for every recipient: HQ writes them itself.
        self._transport = transport if transport is not None and not ws.compress else None
        if self._transport is not None:
            # The cap is the high-water mark: aiohttp then never parks its writer (pongs, close) on drain().
            self._transport.set_write_buffer_limits(high=max_buffered_bytes)
        #: Set once HQ decided to close the socket (the reason it will close with).
        self.closing: Close | None = None

    # Peer ----------------------------------------------------------------------------------------
    async def enter(self, room: str) -> None:
        """Enter ``room`` in the node's room table (cluster routing counts this member too)."""
        await self._rooms.enter_direct(self.socket_id, room, self)

    async def leave(self, room: str) -> None:
        """Leave ``room``."""
        await self._rooms.leave_direct(self.socket_id, room)

    async def send(self, event: str, payload: dict[str, Any]) -> None:
        """Push ``{"type": event, ...payload}`` to this socket."""
        await self.send_text(frames.event_text(event, payload))

    async def end(self, reason: str) -> None:
        """Close with the contract's code for why the session ended (``session_ended`` was sent)."""
        await self.close(frames.SESSION_ENDED.get(reason, frames.INVALID_TOKEN))

    # DirectMember --------------------------------------------------------------------------------
    def write_broadcast(self, broadcast: Broadcast) -> bool:
        """Write a broadcast's frame (encoded once for all plain members) at once, if uncompressed."""
        if self._transport is None:
            return self._ws.closed  # compressed: send_broadcast; closed: nothing to do
        self._write(broadcast.encoded(frames.event_frame))
        return True

    async def send_broadcast(self, broadcast: Broadcast) -> None:
        """Send a broadcast through aiohttp's compressing writer."""
        await self.send_text(broadcast.encoded(frames.event_text))

    # writing -------------------------------------------------------------------------------------
    async def send_ack(self, ref: Any, answer: Ack) -> None:
        """Answer a client frame."""
        await self.send_text(frames.ack_text(ref, answer))

    async def send_text(self, text: str) -> None:
        """Send one text frame."""
        if self._transport is not None:
            self._write(websocket_text_frame(text))
            return
        if self._ws.closed:
            return
        try:
            await self._ws.send_str(text)
        except (ConnectionError, RuntimeError):  # closed meanwhile: the read loop sees it
            pass

    def _write(self, frame: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing() or self._ws.closed:
            return
        if not write_frame_capped(transport, frame, self._cap):
            self._faults.report("slow_consumer")
            self._transport = None
            transport.abort()

    async def close(self, close: Close) -> None:
        """Close the WebSocket with ``close``'s code and reason (once; later calls change nothing).

        Called from another task than the socket's reader (a revocation, an expiry timer) too:
        aiohttp sends the close frame, and the reader's pending receive ends when the client's
        close frame (or the close timeout) arrives.
        """
        if self.closing is not None:
            return
        self.closing = close
        if not self._ws.closed:
            try:
                await self._ws.close(code=close.code, message=close.reason.encode())
            except (ConnectionError, RuntimeError):
                pass

    def close_soon(self, close: Close) -> None:
        """:meth:`close` from a timer callback (in a background task)."""
        self._tasks.spawn(self.close(close), name="plain-websocket-close")
