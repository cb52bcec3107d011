"""``GET /ws``, ``/ws/{channel}`` and ``/missions``: the plain WebSocket endpoint (contract §8).

For clients without a Socket.IO library (a browser's ``new WebSocket(...)``, ``websocat``, API
testers, small devices). A socket's life here:

1. the upgrade is always completed, so that every refusal is a close code a browser can read;
2. a browser ``Origin`` outside ``[server] allowed_origins`` is closed ``4003`` at once, before any
   token is looked at (a page on another site must not ride the ``jwt`` cookie);
3. the token is the first present of the ``token`` query parameter (the access log redacts it:
   hq/ops/access_log.py), ``Authorization: Bearer`` and the ``jwt`` cookie; only that one is
   judged. With none, the first ``auth`` frame is awaited for :data:`AUTH_TIMEOUT` seconds on the
   real-time layer's clock (a test's manual clock moves it); other frames meanwhile are answered
   ``token_missing``. A refused token closes with the contract's code (:mod:`.frames`);
4. the socket is then a :class:`~hq.realtime.peers.Peer` of the shared events
   (:class:`~hq.realtime.realtime.Realtime`): ``/ws/{channel}`` joins that channel first (its
   answer is sent as an ack with ``ref: null``; ``forbidden`` closes 4003, ``not_found`` 4004);
5. each text frame is one event answered with an ack carrying exactly the Socket.IO answer; an
   ``auth`` frame on a live socket is a ``reauth``. Frames that are no event (not JSON, not an
   object, no string ``type``, binary) are answered ``bad_request`` and reported to
   :class:`~hq.realtime.engine.ProtocolFaults` (a counter and a rate-limited warning line, never a
   traceback); none of them closes the socket;
6. aiohttp pings every ``[server] ping_interval`` seconds (RFC 6455 ping frames) and closes a
   socket whose pong does not come within half that; a frame over ``[server] max_packet_bytes``
   closes it ``1009``; HQ stopping closes every socket ``1001``.

"Too many events, repeatedly" (close 4008): every event spends the shared per-socket budget
(``[limits] events_per_second``, bursts of ``events_burst``), and an event over it is answered
``rate_limited`` as on Socket.IO. A client may get that answer now and then; one that goes on
sending regardless is closed. Each ``rate_limited`` answer takes a strike from a second bucket of
``events_burst`` strikes refilled at :data:`STRIKES_PER_SECOND`: a client pacing a little too fast
is answered ``rate_limited`` a few times a second and never runs out; a flood runs out after about
``events_burst`` refusals beyond the burst, well within a second.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, hdrs, web

from ...addresses import AddressResolver
from ...auth.identity import Principal
from ...auth.limits import TokenBucket
from ...config import Settings
from ...errors import AuthError, EventError, UnavailableError
from ..eager import run_eagerly
from ..fanout import DirectFanout
from ..peers import PLAIN_WEBSOCKET, Ack, token_from_headers
from ..realtime import MALFORMED_EVENT
from ..schemas import AUTH_EVENT
from . import frames
from .frames import BadFrame
from .peer import PlainSocket

if TYPE_CHECKING:
    from ..realtime import Realtime

log = logging.getLogger(__name__)

#: Seconds a socket opened without a token has to send its ``auth`` frame.
AUTH_TIMEOUT = 5.0
#: How fast a socket's strikes (``rate_limited`` answers it may get) come back.
STRIKES_PER_SECOND = 1.0
#: The channel ``/missions`` joins (the original design's address).
MISSIONS = "missions"


class PlainWebSocketResponse(web.WebSocketResponse):
    """aiohttp's WebSocket response, whose own closes say why in the contract's words.

    aiohttp closes a socket itself when a frame is over ``max_msg_size`` (1009), with no reason
    text; the contract's reason is ``Message Too Big``.
    """

    async def close(self, *, code: int = 1000, message: bytes = b"", drain: bool = True) -> bool:
        """Close; 1009 without a reason gets the contract's."""
        if code == frames.MESSAGE_TOO_BIG.code and not message:
            message = frames.MESSAGE_TOO_BIG.reason.encode()
        return await super().close(code=code, message=message, drain=drain)


def token_from_request(request: web.Request) -> str | None:
    """The first token source present: ``token`` query, Bearer header, ``jwt`` cookie (contract §8).

    Only that one is judged: an ``Authorization`` header of another scheme is an invalid token
    ("\\x00"), not a reason to look further.
    """
    if "token" in request.query:
        return request.query["token"]
    return token_from_headers(request.headers.get(hdrs.AUTHORIZATION, ""), request.headers.get(hdrs.COOKIE, ""))


class PlainWebSockets:
    """The endpoint: admits plain WebSockets and hands their frames to the shared events."""

    def __init__(self, realtime: Realtime, settings: Settings, addresses: AddressResolver) -> None:
        self._realtime = realtime
        self._server = settings.server
        self._limits = settings.limits
        self._addresses = addresses
        self._allowed_origins = frozenset(settings.server.allowed_origins)
        rooms = realtime.sio.manager
        assert isinstance(rooms, DirectFanout)
        self._rooms: DirectFanout = rooms
        #: Every open plain socket of this node, admitted or not yet (HQ stopping closes them all).
        self._open: dict[str, PlainSocket] = {}

    def routes(self) -> list[web.RouteDef]:
        """``/ws``, ``/ws/{channel}`` and ``/missions``."""
        return [web.get("/ws", self.handle), web.get("/ws/{channel}", self.handle),
                web.get("/missions", self.handle)]

    @property
    def open_sockets(self) -> int:
        """Plain sockets open on this node (admitted or waiting for their ``auth`` frame)."""
        return len(self._open)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """One plain WebSocket, from the upgrade to its close."""
        server = self._server
        ws = PlainWebSocketResponse(heartbeat=server.ping_interval, max_msg_size=server.max_packet_bytes,
                                    compress=server.websocket_compression, timeout=2.0)
        if not ws.can_prepare(request).ok:
            return web.json_response(
                {"error": {"code": "bad_request", "message": "this endpoint speaks WebSocket only (RFC 6455)"}},
                status=426, headers={hdrs.UPGRADE: "websocket", hdrs.CONNECTION: "Upgrade"})
        await ws.prepare(request)
        socket = PlainSocket(ws, request.transport, self._rooms, self._realtime.faults, self._realtime.tasks,
                             server.max_buffered_bytes)
        self._open[socket.socket_id] = socket
        reason = "transport close"
        try:
            reason = await self._serve(socket, ws, request)
        finally:
            if isinstance(ws.exception(), TimeoutError):  # aiohttp's heartbeat cut it (and cancelled us)
                reason = "ping timeout"
            del self._open[socket.socket_id]
            # aiohttp cancels this handler once the connection is gone (a close HQ started ends
            # with it): the release runs in its own task, so it is never cut short.
            await asyncio.shield(self._realtime.tasks.spawn(self._release(socket, ws, reason), name="plain-release"))
        return ws

    async def _release(self, socket: PlainSocket, ws: web.WebSocketResponse, reason: str) -> None:
        """The socket is gone: out of its rooms, presence and indexes (audited), then closed."""
        await self._realtime.release(socket.socket_id, reason)
        self._rooms.forget_direct(socket.socket_id)
        if not ws.closed:
            await ws.close()

    async def _serve(self, socket: PlainSocket, ws: web.WebSocketResponse, request: web.Request) -> str:
        """Admit the socket and read its frames; returns why it ended (an audit ``reason``)."""
        address = self._addresses.client_address(request)
        user_agent = request.headers.get(hdrs.USER_AGENT, "")
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is not None and origin not in self._allowed_origins:
            self._realtime.refused("origin_not_allowed", address, PLAIN_WEBSOCKET, user_agent, origin=origin)
            await socket.close(frames.ORIGIN_NOT_ALLOWED)
            return "server disconnect"
        token = token_from_request(request)
        if token is None:
            principal = await self._await_auth(socket, ws, address, user_agent)
        else:
            principal = await self._admit(socket, token, address, user_agent)
            if principal is not None:
                self._realtime.accept(socket, principal, address, user_agent)
        if principal is None:
            return "server disconnect" if socket.closing is not None else "transport close"
        channel = request.match_info.get("channel") or (MISSIONS if request.path == "/missions" else None)
        if channel is not None and not await self._join_on_open(socket, channel):
            return "server disconnect"
        return await self._read_frames(socket, ws)

    async def _admit(self, socket: PlainSocket, token: str, address: str, user_agent: str,
                     ref: Any = None, answer: bool = False) -> Principal | None:
        """Identify ``token``; None (the socket closed with the contract's code) if it is refused.
        ``answer``: the token came in an ``auth`` frame, which gets its ack (with ``ref``) first."""
        try:
            return await self._realtime.identify(token, address)
        except AuthError as exc:
            code, message, close = exc.code, exc.message, frames.TOKEN_REFUSED.get(exc.code, frames.INVALID_TOKEN)
        except UnavailableError as exc:
            code, message, close = "unavailable", exc.message, frames.TRY_AGAIN_LATER
        self._realtime.refused(code, address, PLAIN_WEBSOCKET, user_agent)
        if answer:
            await socket.send_ack(ref, {"ok": False, "error": {"code": code, "message": message}})
        await socket.close(close)
        return None

    async def _await_auth(self, socket: PlainSocket, ws: web.WebSocketResponse, address: str,
                          user_agent: str) -> Principal | None:
        """Wait for the ``auth`` frame (:data:`AUTH_TIMEOUT` seconds); the admitted principal, or None."""
        timer = self._realtime.clock.call_later(AUTH_TIMEOUT, self._auth_overdue, socket, address, user_agent)
        budget = TokenBucket(self._limits.events_per_second, self._limits.events_burst)
        strikes = TokenBucket(STRIKES_PER_SECOND, self._limits.events_burst)
        try:
            while True:
                msg = await ws.receive()
                if msg.type is not WSMsgType.TEXT and msg.type is not WSMsgType.BINARY:
                    self._report_error(ws, msg)
                    return None
                ref, event, payload = None, None, None
                if msg.type is WSMsgType.TEXT:
                    try:
                        frame = frames.read_frame(msg.data)
                        ref, event, payload = frame.ref, frame.event, frame.payload
                    except BadFrame as bad:
                        ref = bad.ref
                if not budget.take():
                    await socket.send_ack(ref, _error("rate_limited", "too many events; slow down"))
                    if not strikes.take():
                        await socket.close(frames.RATE_LIMITED)
                        return None
                    continue
                if event != AUTH_EVENT:
                    await socket.send_ack(ref, _error("token_missing", 'send {"type": "auth", "token": ...} first'))
                    continue
                try:
                    token = self._realtime.schemas.decode(AUTH_EVENT, payload).token
                except EventError as exc:
                    await socket.send_ack(ref, _error(exc.code, exc.message))
                    continue
                principal = await self._admit(socket, token, address, user_agent, ref, answer=True)
                if principal is not None:
                    self._realtime.accept(socket, principal, address, user_agent)
                    await socket.send_ack(ref, {"ok": True, "exp": principal.exp})
                return principal
        finally:
            timer.cancel()

    def _auth_overdue(self, socket: PlainSocket, address: str, user_agent: str) -> None:
        """No ``auth`` frame in time: closed 4001 ``Token Missing``."""
        if socket.closing is None and self._realtime.connection(socket.socket_id) is None:
            self._realtime.refused("token_missing", address, PLAIN_WEBSOCKET, user_agent)
            socket.close_soon(frames.TOKEN_REFUSED["token_missing"])

    async def _join_on_open(self, socket: PlainSocket, channel: str) -> bool:
        """``/ws/{channel}``: join it as a ``join`` event would (its answer is an ack with ``ref: null``);
        False if the socket was closed instead."""
        answer = await self._realtime.handle(socket.socket_id, "join", {"channel": channel})
        await socket.send_ack(None, answer)
        if answer["ok"]:
            return True
        code = answer["error"]["code"]
        close = {"forbidden": frames.CLEARANCE, "not_found": frames.NO_CHANNEL, "bad_request": frames.NO_CHANNEL}.get(
            code, frames.TRY_AGAIN_LATER)
        await socket.close(close)
        return False

    async def _read_frames(self, socket: PlainSocket, ws: web.WebSocketResponse) -> str:
        """Read the admitted socket's frames until it closes; each event's handler starts at once
        (:func:`~hq.realtime.eager.run_eagerly`). Returns why the socket ended."""
        strikes = TokenBucket(STRIKES_PER_SECOND, self._limits.events_burst)
        faults, tasks = self._realtime.faults, self._realtime.tasks
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.TEXT:
                try:
                    frame = frames.read_frame(msg.data)
                except BadFrame as bad:
                    faults.report("bad_event")
                    run_eagerly(self._answer(socket, strikes, bad.ref, MALFORMED_EVENT, bad.message), tasks)
                    continue
                # A live socket's ``auth`` frame is a ``reauth`` (the same answer).
                event = "reauth" if frame.event == AUTH_EVENT else frame.event
                run_eagerly(self._answer(socket, strikes, frame.ref, event, frame.payload), tasks)
            elif msg.type is WSMsgType.BINARY:
                faults.report("binary_frame")
                run_eagerly(self._answer(socket, strikes, None, MALFORMED_EVENT,
                                         "binary frames are not read: send JSON text frames"), tasks)
            else:
                return self._report_error(ws, msg) if socket.closing is None else "server disconnect"

    async def _answer(self, socket: PlainSocket, strikes: TokenBucket, ref: Any, event: str, payload: Any) -> None:
        answer = await self._realtime.handle(socket.socket_id, event, payload)
        await socket.send_ack(ref, answer)
        if not answer["ok"] and answer["error"]["code"] == "rate_limited" and not strikes.take():
            await socket.close(frames.RATE_LIMITED)

    def _report_error(self, ws: web.WebSocketResponse, msg: Any) -> str:
        """Why the read loop ended, as an audit ``reason``; an oversize frame is counted as a fault."""
        if isinstance(ws.exception(), TimeoutError):  # aiohttp's heartbeat: no pong in time
            return "ping timeout"
        if msg.type is WSMsgType.ERROR:
            self._realtime.faults.report("too_large" if getattr(msg.data, "code", None) == 1009
                                         else "bad_websocket_frame")
            return "transport error"
        return "client disconnect" if msg.type is WSMsgType.CLOSE else "transport close"

    async def shutdown(self, app: object = None) -> None:
        """HQ is stopping: close every plain socket ``1001 Going Away`` (aiohttp's on_shutdown)."""
        sockets = list(self._open.values())
        if sockets:
            await asyncio.gather(*(socket.close(frames.GOING_AWAY) for socket in sockets))


def _error(code: str, message: str) -> Ack:
    return {"ok": False, "error": {"code": code, "message": message}}
