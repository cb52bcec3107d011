"""HQ's Socket.IO server: the boundary where Engine.IO messages become events.

python-socketio routes a client EVENT by its name to whatever handler has that name, including
the server's own ``connect`` and ``disconnect`` handlers (``42["disconnect","x"]`` would run HQ's
disconnect logic on a live socket; ``42["connect",{...}]`` would re-run authentication), logs a
traceback for packets it cannot decode, and starts a Task per event. :class:`SocketServer`
checks every packet here, once, so that no handler can be reached by name by accident:

- an EVENT to HQ's namespace whose name is not one of :attr:`SocketServer.client_events` (and an
  EVENT with a reserved name to any namespace, the Admin UI's included) is renamed to
  :data:`REFUSED_EVENT` before dispatch; its handler answers ``not_found`` and counts it. The
  reserved names (``connect``, ``connect_error``, ``disconnect``, ``disconnecting``,
  ``newListener``, ``removeListener``) are never client events;
- packets that do not decode, name no event, carry too many binary attachments, or are of a type
  a client may not send are reported to :class:`~hq.realtime.engine.ProtocolFaults` and close the socket;
- a second CONNECT on a connected namespace is refused without touching the live one;
- events run where they are read, eagerly: a handler that completes without waiting costs no Task;
  one that waits (for the store's commit, say) is continued in a Task from where it stopped, so
  the socket's next frames are read meanwhile and a client's pipelined messages share a group
  commit. Events start in the order they arrive (ids, acks and broadcasts keep that order).

Relies on ``AsyncServer._handle_eio_message`` / ``_handle_event`` / ``_binary_packet`` /
``environ`` and ``manager.sid_from_eio_sid`` (python-socketio range pinned in pyproject.toml;
tests/test_engine.py fails if they change shape or stop being called).
"""

from __future__ import annotations

import logging
from typing import Any, Coroutine

import socketio
from socketio import packet as sio_packet

from ..tasks import BackgroundTasks
from .eager import _resume, run_eagerly  # noqa: F401  (_resume: tests/test_engine.py checks it here)
from .engine import LeanEngineServer, LeanSocket, ProtocolFaults

#: Socket.IO's reserved event names: a client may never emit them (socket.io-parser refuses them).
RESERVED_EVENTS = frozenset({"connect", "connect_error", "disconnect", "disconnecting", "newListener",
                             "removeListener"})
#: The name a refused event is dispatched under; its handler answers ``not_found``.
REFUSED_EVENT = "hq:refused"
log = logging.getLogger(__name__)

#: HQ's events take one payload; python-socketio reassembles this many binary attachments at most.
MAX_ATTACHMENTS = 4


class SocketServer(socketio.AsyncServer):
    """A python-socketio ``AsyncServer`` whose clients can reach exactly ``client_events``."""

    def __init__(self, *, client_events: frozenset[str], faults: ProtocolFaults, keep_environ: bool = False,
                 max_buffered_bytes: int = 1 << 20, websocket_compression: bool = False,
                 background: BackgroundTasks | None = None, **kwargs: Any) -> None:
        if client_events & RESERVED_EVENTS:
            raise ValueError(f"reserved event names cannot be client events: {sorted(client_events & RESERVED_EVENTS)}")
        self.client_events = client_events
        self.faults = faults
        self._keep_environ = keep_environ
        #: Where handlers that wait, and the Engine.IO sockets' closes, run (ended at shutdown).
        self.background = background if background is not None else BackgroundTasks()
        self._engine_options = {"faults": faults, "max_buffered_bytes": max_buffered_bytes,
                                "websocket_compression": websocket_compression, "background": self.background}
        kwargs["async_handlers"] = False
        super().__init__(**kwargs)

    def _engineio_server_class(self) -> type:
        options = self._engine_options

        class Engine(LeanEngineServer):
            def __init__(self, **kwargs: Any) -> None:
                super().__init__(**options, **kwargs)
        return Engine

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        """Decode one Engine.IO message and dispatch it, refusing what a client may not send."""
        if eio_sid in self._binary_packet:  # an attachment of a BINARY_EVENT being reassembled
            if not isinstance(data, bytes):
                return await self._fault(eio_sid, "bad_event")
            try:
                await super()._handle_eio_message(eio_sid, data)
            except (ValueError, IndexError, KeyError, TypeError):  # placeholders that point nowhere
                return await self._fault(eio_sid, "bad_event")
            return None
        if not isinstance(data, str):
            return await self._fault(eio_sid, "binary_frame")
        try:
            pkt = self.packet_class(encoded_packet=data)
        except Exception:  # python-socketio's decoder raises ValueError, IndexError, JSON errors...
            return await self._fault(eio_sid, "bad_socketio_packet")
        kind, namespace = pkt.packet_type, pkt.namespace or "/"
        if kind == sio_packet.EVENT or kind == sio_packet.BINARY_EVENT:
            if not isinstance(pkt.data, list) or not pkt.data or not isinstance(pkt.data[0], str):
                return await self._fault(eio_sid, "bad_event")
            if kind == sio_packet.BINARY_EVENT:
                if not 0 < pkt.attachment_count <= MAX_ATTACHMENTS:
                    return await self._fault(eio_sid, "bad_event")
                if self.manager.sid_from_eio_sid(eio_sid, namespace) is None:
                    return await self._fault(eio_sid, "unexpected_socketio_packet")
            if not self._may_emit(namespace, pkt.data[0]):
                pkt.data[0] = REFUSED_EVENT
            if kind == sio_packet.BINARY_EVENT:
                self._binary_packet[eio_sid] = pkt
                return None
            return await self._handle_event(eio_sid, pkt.namespace, pkt.id, pkt.data)
        if kind == sio_packet.CONNECT:
            if self.manager.sid_from_eio_sid(eio_sid, namespace) is not None:
                # Identity attaches at the handshake only; a second CONNECT changes nothing.
                self.faults.report("repeated_connect")
                return None
            await self._handle_connect(eio_sid, pkt.namespace, pkt.data)
            if not self._keep_environ and eio_sid in self.environ:
                # HQ's Connection keeps what it needs; the headers need not live on. Cleared, not
                # just dropped: python-engineio's frames below the websocket loop hold the same dict.
                self.environ[eio_sid].clear()
            return None
        if kind == sio_packet.DISCONNECT:
            if self.manager.sid_from_eio_sid(eio_sid, namespace) is not None:
                await self._handle_disconnect(eio_sid, pkt.namespace, self.reason.CLIENT_DISCONNECT)
            return None
        # ACK (HQ never asks a client for one), BINARY_ACK, CONNECT_ERROR, unknown types.
        return await self._fault(eio_sid, "unexpected_socketio_packet")

    async def _handle_event(self, eio_sid: str, namespace: Any, id: Any, data: Any) -> None:
        """Dispatch an event (the name already checked) if the socket is connected to the namespace."""
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace or "/")
        if sid is None or not self.manager.is_connected(sid, namespace or "/"):
            self.faults.report("unexpected_socketio_packet")
            return
        if not self._may_emit(namespace or "/", data[0]):
            data[0] = REFUSED_EVENT  # a reassembled BINARY_EVENT comes here without passing the gate above
        self.run_eagerly(self._handle_event_internal(self, sid, eio_sid, data, namespace or "/", id))

    async def _handle_event_internal(self, server: Any, sid: str, eio_sid: str, data: list[Any],
                                     namespace: str, id: Any) -> None:
        """Run HQ's handler for an event on its namespace and write the ack straight to the socket.

        Other namespaces (the Admin UI's) go python-socketio's way. HQ's acks never carry binary
        data, so the ack is encoded here in one step, exactly as ``socketio.packet`` would.
        """
        handler = self.handlers.get(namespace, {}).get(data[0]) if namespace == "/" else None
        if handler is None:
            await super()._handle_event_internal(server, sid, eio_sid, data, namespace, id)
            return
        ack = await handler(sid, *data[1:])
        if id is None:
            return
        socket = self.eio.sockets.get(eio_sid)
        if isinstance(socket, LeanSocket):
            await socket.send_encoded(f"43{id}{self.packet_class.json.dumps([ack], separators=(',', ':'))}")
        elif socket is not None:
            await self._send_packet(eio_sid, self.packet_class(sio_packet.ACK, namespace=namespace, id=id,
                                                              data=[ack]))

    def run_eagerly(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` now, up to its first wait; only if it waits, finish it in a background Task
        (:func:`hq.realtime.eager.run_eagerly`)."""
        run_eagerly(coro, self.background)

    def _may_emit(self, namespace: str, event: str) -> bool:
        """HQ's namespace takes exactly its client events; the Admin UI's own namespace keeps its
        handlers, and no namespace ever takes a reserved name."""
        if event in RESERVED_EVENTS:
            return False
        return event in self.client_events if namespace == "/" else True

    async def _fault(self, eio_sid: str, kind: str) -> None:
        """Report a packet the protocol cannot go on after, and close that socket only."""
        self.faults.report(kind)
        self._binary_packet.pop(eio_sid, None)
        socket = self.eio.sockets.get(eio_sid)
        if socket is not None:
            await socket.close(wait=False, abort=False, reason=self.reason.CLIENT_DISCONNECT)
