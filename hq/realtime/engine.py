"""HQ's Engine.IO server: a lean WebSocket path and the protocol followed to the letter.

python-engineio (pinned in pyproject.toml) serves each WebSocket with a Task per received frame
(``wait_for`` around every read), an ``asyncio.Queue`` and a writer Task per socket that every
packet passes through, and a sleeping Task per socket between pings. HQ keeps python-engineio's
handshake, long-polling and upgrade logic and replaces only the per-socket machinery:

- a socket is adopted as a :class:`LeanSocket` when Engine.IO's ``connect`` event fires (the one
  hook between the socket's creation and its first use);
- on the websocket transport, frames are read, decoded and dispatched in the connection's own
  aiohttp handler task, and every packet is written straight to the connection's transport as a
  whole WebSocket frame (through aiohttp's writer when compression was negotiated): no queue,
  no writer task; a broadcast is framed once for all its recipients;
- a slow reader cannot grow memory without bound: the transport's write buffer is capped
  (``[server] max_buffered_bytes``) and a socket that would pass the cap is closed;
- pings are timer handles, not sleeping Tasks; a client that misses a PONG for ``ping_timeout``
  after a PING is closed, on either transport;
- a client's CLOSE packet closes the socket (both transports); junk is reported to
  :class:`ProtocolFaults` (a counter and a rate-limited WARNING, never a traceback) and the
  socket closed where the protocol cannot continue; unsupported methods and transports get 400.

The internals relied on (``AsyncSocket`` attributes and ``_upgrade_websocket`` / ``receive`` /
``handle_post_request`` / ``schedule_ping`` / ``close``, ``AsyncServer._trigger_event`` /
``handle_request`` / ``_bad_request``) are checked by tests/test_engine.py, which fails if they
change shape or stop being called.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections import Counter
from typing import Any, Awaitable, Callable, Protocol

import engineio
from aiohttp import WSMsgType, web
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio import payload as eio_payload
from engineio.async_socket import AsyncSocket

from ..tasks import BackgroundTasks
from ..vocab import FAULT_KINDS

log = logging.getLogger(__name__)

#: Methods the Engine.IO endpoint answers; anything else is a bad request (400), as the protocol says.
ENGINEIO_METHODS = ("GET", "POST", "OPTIONS")
OTHER_METHODS = ("PUT", "DELETE", "PATCH")



class FaultObserver(Protocol):
    """Told of every protocol fault (metrics listen); must be quick and never raise."""

    def protocol_fault(self, kind: str) -> None:
        """A client sent something the protocol does not allow (``kind`` from FAULT_KINDS)."""


class ProtocolFaults:
    """Counts malformed input by kind and logs it without flooding the log.

    The first fault is logged at once; later ones are summed and logged at most once per
    ``interval`` seconds as one WARNING line with counts by kind. No traceback, no client text.
    """

    def __init__(self, interval: float = 10.0) -> None:
        self._interval = interval
        self._pending: Counter[str] = Counter()
        self._last_log = -interval
        self._observers: list[FaultObserver] = []

    def observe(self, observer: FaultObserver) -> None:
        """Report every fault to ``observer`` too."""
        self._observers.append(observer)

    def report(self, kind: str) -> None:
        """Count one fault of ``kind``."""
        kind = kind if kind in FAULT_KINDS else "bad_request"
        for observer in self._observers:
            observer.protocol_fault(kind)
        self._pending[kind] += 1
        now = time.monotonic()
        if now - self._last_log >= self._interval:
            summary = ", ".join(f"{k}={n}" for k, n in sorted(self._pending.items()))
            log.warning("malformed client input (sockets closed where the protocol cannot go on): %s", summary)
            self._pending.clear()
            self._last_log = now


def websocket_text_frame(text: str) -> bytes:
    """``text`` as one final, unmasked, uncompressed WebSocket text frame, as a server sends it
    (RFC 6455 §5.2): a broadcast is framed once and the same bytes written to every recipient."""
    payload = text.encode("utf-8")
    size = len(payload)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 65536:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + payload


PING_FRAME = websocket_text_frame(str(eio_packet.PING))


def write_frame_capped(transport: asyncio.Transport, frame: bytes, cap: int) -> bool:
    """Write a whole WebSocket frame to ``transport`` at once; False (nothing written) if the
    transport already buffers more than ``cap`` bytes for a slow reader: the caller closes it.

    Never waits for a slow reader (a broadcast would wait with it) and never buffers without
    bound; the client reconnects and catches up from history. The check is before a write, so one
    frame larger than the cap (a big history) still goes. One write of a whole frame: nothing
    aiohttp writes (pings, pongs, a close) can interleave with it, and as the transport's
    high-water mark is the cap, no aiohttp writer is ever parked on drain().
    """
    if transport.get_write_buffer_size() > cap:
        return False
    transport.write(frame)
    return True


class LeanSocket(AsyncSocket):
    """An Engine.IO socket without per-frame Tasks, a writer Task, a queue on websocket or ping Tasks."""

    server: "LeanEngineServer"
    ws: web.WebSocketResponse | None
    _raw_frames: bool
    _transport: asyncio.Transport | None
    _ping_timer: asyncio.TimerHandle | None

    @classmethod
    def adopt(cls, socket: AsyncSocket) -> "LeanSocket":
        """Turn a freshly created python-engineio socket into a lean one (same state, new behaviour)."""
        socket.__class__ = cls
        lean: LeanSocket = socket  # type: ignore[assignment]
        lean.ws = None
        lean._raw_frames = False
        lean._transport = None
        lean._ping_timer = None
        return lean

    # pings: timer handles instead of a sleeping Task per socket --------------------------------
    def schedule_ping(self) -> None:
        """Arm the next PING (on connect and after every PONG)."""
        if self.last_ping:
            self.last_ping = None
            self._arm(self.server.ping_interval, self._ping_due)

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        if self._ping_timer is not None:
            self._ping_timer.cancel()
        self._ping_timer = asyncio.get_running_loop().call_later(delay, callback)

    def _ping_due(self) -> None:
        if self.closing or self.closed:
            return
        self.last_ping = time.time()
        self._arm(self.server.ping_timeout, self._pong_overdue)
        ping = eio_packet.Packet(eio_packet.PING)
        if self.ws is not None and self._raw_frames:
            self._write_frame(PING_FRAME)
        elif self.ws is not None:
            self.server.background.spawn(self._write_ws(ping.encode()))
        else:
            self._enqueue(ping)

    def _pong_overdue(self) -> None:
        if self.closing or self.closed or self.last_ping is None:
            return
        self.server.background.spawn(self.close(wait=False, abort=True, reason=self.server.reason.PING_TIMEOUT))

    async def check_ping_timeout(self) -> bool:
        """Timers close a silent client; there is nothing to check per packet."""
        return not self.closed

    # sending ------------------------------------------------------------------------------------
    async def send(self, pkt: eio_packet.Packet) -> None:
        """Send a packet: written at once on a websocket, queued for the next poll otherwise."""
        if self.closed:
            return
        if self.ws is not None:
            await self._write_ws(pkt.encode())
        else:
            self._enqueue(pkt)

    def _enqueue(self, pkt: eio_packet.Packet) -> None:
        if self.queue.qsize() >= self.server.max_queued_packets:
            # A polling client that never collects its packets: the same cap as a slow websocket.
            self.server.faults.report("slow_consumer")
            self.server.background.spawn(self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_ERROR))
            return
        self.queue.put_nowait(pkt)

    async def send_encoded(self, text: str) -> None:
        """Send an already encoded Engine.IO packet."""
        if self.closed:
            return
        if self.ws is not None:
            await self._write_ws(text)
        else:
            self._enqueue(eio_packet.Packet(encoded_packet=text))

    def send_frame(self, frame: bytes, text: str) -> bool:
        """Send a broadcast prepared once for all recipients: ``frame`` is ``text`` as a WebSocket
        frame (:func:`websocket_text_frame`). Returns False if it must go ``send_encoded``'s way
        (long-polling, a compressed websocket)."""
        if self.closed:
            return True
        if self.ws is None or not self._raw_frames:
            return False
        self._write_frame(frame)
        return True

    async def _write_ws(self, text: str) -> None:
        ws = self.ws
        if ws is None:
            return
        if self._raw_frames:
            self._write_frame(websocket_text_frame(text))
            return
        try:  # a compressed websocket: aiohttp keeps the compressor's state per frame
            await ws.send_str(text)
        except (ConnectionError, RuntimeError):
            self.ws = None

    def _write_frame(self, frame: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if not write_frame_capped(transport, frame, self.server.max_buffered_bytes):
            self.ws = None
            self.server.faults.report("slow_consumer")
            transport.abort()
            self.server.background.spawn(self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_ERROR))

    # receiving ----------------------------------------------------------------------------------
    async def receive(self, pkt: eio_packet.Packet) -> None:
        """Handle one packet from the client (both transports)."""
        kind = pkt.packet_type
        if kind == eio_packet.MESSAGE:
            await self.server._trigger_event("message", self.sid, pkt.data, run_async=False)
        elif kind == eio_packet.PONG:
            self.schedule_ping()
        elif kind == eio_packet.CLOSE:
            # The client is leaving: answer by closing the socket (a pending poll gets the CLOSE).
            await self.close(wait=False, abort=False, reason=self.server.reason.CLIENT_DISCONNECT)
        elif kind == eio_packet.UPGRADE and self.ws is None:
            await self.send(eio_packet.Packet(eio_packet.NOOP))
        else:
            self.server.faults.report("unexpected_engineio_packet")
            raise eio_exceptions.UnknownPacketError()

    async def handle_post_request(self, environ: dict[str, Any]) -> None:
        """A long-polling POST: a payload of packets; junk closes the socket with 400."""
        try:
            length = int(environ.get("CONTENT_LENGTH") or "0")
        except ValueError:
            length = -1
        if not 0 <= length <= self.server.max_http_buffer_size:
            self.server.faults.report("too_large" if length > 0 else "bad_polling_payload")
            raise eio_exceptions.ContentTooLongError()
        body = await environ["wsgi.input"].read(length)
        try:
            packets = eio_payload.Payload(encoded_payload=body.decode("utf-8")).packets
        except Exception:  # the decoder raises ValueError, IndexError, UnicodeDecodeError...
            self.server.faults.report("bad_polling_payload")
            raise eio_exceptions.UnknownPacketError() from None
        for pkt in packets:
            await self.receive(pkt)

    # closing ------------------------------------------------------------------------------------
    async def close(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        """Close the socket; never waits for a client to collect its packets."""
        if self.closed or self.closing:
            return
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None
        await super().close(wait=False, abort=abort, reason=reason)
        # A pending long-poll returns what is queued (the CLOSE) at once.
        self.queue.put_nowait(None)
        ws = self.ws
        self.ws = None
        if ws is not None and not ws.closed:
            # The websocket's own handler task ends its read loop when the close frame is in.
            self.server.background.spawn(ws.close())
        self.server.forget(self.sid)

    # the websocket transport ----------------------------------------------------------------------
    async def _upgrade_websocket(self, environ: dict[str, Any]) -> web.StreamResponse:
        """Serve this socket over a WebSocket: a new connection or an upgrade from polling."""
        if self.upgraded:
            self.server.faults.report("unexpected_engineio_packet")
            return self.server._bad_request("already upgraded")  # type: ignore[no-any-return]
        request: web.Request = environ["aiohttp.request"]
        ws = web.WebSocketResponse(max_msg_size=self.server.max_http_buffer_size,
                                   compress=self.server.websocket_compression, timeout=2.0)
        await ws.prepare(request)
        await self._serve_websocket(ws, request.transport)
        return ws

    async def _serve_websocket(self, ws: web.WebSocketResponse, transport: asyncio.Transport | None) -> None:
        reason = self.server.reason.TRANSPORT_CLOSE
        try:
            if self.connected and not await self._complete_upgrade(ws):
                return
            self.connected = True
            self.upgraded = True
            if transport is None:
                return
            # The cap is the high-water mark: aiohttp then never parks a writer on drain().
            transport.set_write_buffer_limits(high=self.server.max_buffered_bytes)
            self._transport = transport
            # Uncompressed frames are the same bytes for every recipient: HQ writes them itself.
            self._raw_frames = not ws.compress
            pending = self._take_queued()
            self.ws = ws
            for pkt in pending:
                await self._write_ws(pkt.encode())
            reason = await self._read_frames(ws)
        finally:
            self.ws = None
            self._transport = None
            if not self.closed:
                await self.close(wait=False, abort=True, reason=reason)
            if not ws.closed:
                await ws.close()

    def _take_queued(self) -> list[eio_packet.Packet]:
        """Packets queued while polling (or during the upgrade), in order, leaving the queue empty."""
        packets = []
        while not self.queue.empty():
            pkt = self.queue.get_nowait()
            self.queue.task_done()
            if pkt is not None:
                packets.append(pkt)
        return packets

    async def _complete_upgrade(self, ws: web.WebSocketResponse) -> bool:
        """The upgrade handshake: ``2probe`` → ``3probe``, end the pending poll, then ``5``."""
        self.upgrading = True
        try:
            msg = await ws.receive(timeout=self.server.ping_timeout)
            if msg.type is not WSMsgType.TEXT or msg.data != "2probe":
                self.server.faults.report("unexpected_engineio_packet")
                return False
            await ws.send_str("3probe")
            self.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))  # the pending poll returns
            msg = await ws.receive(timeout=self.server.ping_timeout)
            if msg.type is not WSMsgType.TEXT or msg.data != "5":
                self.server.faults.report("unexpected_engineio_packet")
                return False
            return True
        except (asyncio.TimeoutError, ConnectionError):
            return False
        finally:
            self.upgrading = False

    async def _read_frames(self, ws: web.WebSocketResponse) -> Any:
        """Read, decode and dispatch frames in this task until the connection ends; returns the reason."""
        faults = self.server.faults
        on_message = self.server.message_handler()
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.TEXT:
                data = msg.data
                if not data:
                    faults.report("bad_engineio_packet")
                    return self.server.reason.TRANSPORT_ERROR
                if data[0] == "4":  # MESSAGE, by far the most frequent: no Packet object
                    await on_message(self.sid, data[1:])
                    continue
                if data == "3":
                    self.schedule_ping()
                    continue
                if data == "1":
                    return self.server.reason.CLIENT_DISCONNECT
                faults.report("unexpected_engineio_packet")
                return self.server.reason.TRANSPORT_ERROR
            if msg.type is WSMsgType.BINARY:
                await on_message(self.sid, msg.data)
                continue
            if msg.type is WSMsgType.ERROR:
                # aiohttp reports frames over max_msg_size and protocol violations here.
                faults.report("too_large" if getattr(msg.data, "code", None) == 1009 else "bad_engineio_packet")
                return self.server.reason.TRANSPORT_ERROR
            return self.server.reason.TRANSPORT_CLOSE  # CLOSE, CLOSING, CLOSED


class LeanEngineServer(engineio.AsyncServer):
    """python-engineio's server with HQ's lean sockets and strict request checks."""

    def __init__(self, *, faults: ProtocolFaults, max_buffered_bytes: int, max_queued_packets: int = 1000,
                 websocket_compression: bool = False, background: BackgroundTasks | None = None,
                 **kwargs: Any) -> None:
        # HQ's sockets time out by their own timers; the service Task that polls every socket
        # (with a wait_for per socket) is not needed.
        kwargs["monitor_clients"] = False
        super().__init__(**kwargs)
        self.faults = faults
        self.max_buffered_bytes = max_buffered_bytes
        self.max_queued_packets = max_queued_packets
        self.websocket_compression = websocket_compression
        #: Where a socket's fire-and-forget work (a close, a ping write) runs: kept, and ended at shutdown.
        self.background = background if background is not None else BackgroundTasks()

    def attach(self, app: web.Application, engineio_path: str = "engine.io") -> None:
        """Route the endpoint as python-engineio does, plus the methods the protocol answers with 400."""
        super().attach(app, engineio_path)
        path = f"/{engineio_path.strip('/')}/"
        for method in OTHER_METHODS:
            app.router.add_route(method, path, self.handle_request)

    async def _trigger_event(self, event: str, *args: Any, **kwargs: Any) -> Any:
        if event == "connect":
            # The socket exists and nothing has used it yet: make it lean before its first ping.
            socket = self.sockets.get(args[0])
            if socket is not None and not isinstance(socket, LeanSocket):
                LeanSocket.adopt(socket)
        return await super()._trigger_event(event, *args, **kwargs)

    async def handle_request(self, request: web.Request) -> web.StreamResponse:  # type: ignore[override]
        """One Engine.IO HTTP request; never a 500 and never a traceback for a client's junk."""
        transport = request.query.get("transport", "polling")
        if request.method not in ENGINEIO_METHODS or transport not in self.transports:
            self.faults.report("bad_request")
            return web.json_response({"code": 3, "message": "Bad request"}, status=400)
        if request.method == "POST" and "sid" not in request.query:
            self.faults.report("bad_request")
            return web.json_response({"code": 1, "message": "Session ID unknown"}, status=400)
        try:
            return await super().handle_request(request)  # type: ignore[no-any-return]
        except (web.HTTPException, asyncio.CancelledError):
            raise
        except Exception as exc:  # a client's junk must never become a 500 with a traceback
            self.faults.report("bad_request")
            log.warning("Engine.IO request refused: %s", type(exc).__name__)
            return web.json_response({"code": 3, "message": "Bad request"}, status=400)

    def message_handler(self) -> Callable[[str, Any], Awaitable[None]]:
        """The ``message`` handler (python-socketio's), called directly by the websocket read loop.

        python-engineio's ``_trigger_event`` builds a closure per call and logs a traceback for a
        handler's exception; HQ's handler answers every error itself, and one that escapes is
        logged once here.
        """
        handler = self.handlers.get("message")

        async def on_message(sid: str, data: Any) -> None:
            if handler is None:
                return
            try:
                await handler(sid, data)
            except Exception:
                log.exception("message handler failed")
        return on_message

    def _log_error_once(self, message: str, message_key: str) -> None:
        # python-engineio logs each kind of bad request once at ERROR; HQ counts them instead
        # (the message can quote the client's sid or origin).
        self.faults.report("bad_request")

    def forget(self, sid: str) -> None:
        """Drop a closed socket at once (python-engineio would keep it until its next request)."""
        socket = self.sockets.get(sid)
        if socket is not None and socket.closed:
            del self.sockets[sid]
