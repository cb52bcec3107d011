"""The Socket.IO transport of the real-time events (``/socket.io/``, contract §4): a thin adapter.

It reads the token at the handshake (``auth.token``, Bearer header, ``jwt`` cookie, ``token``
query, the first present), turns a refusal into ``connect_error``, hands every client event to
:meth:`~hq.realtime.realtime.Realtime.handle`'s Socket.IO form and ends a socket as python-socketio
does. Everything the events decide is in hq/realtime/realtime.py, shared with the plain WebSocket.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import socketio

from ..addresses import AddressResolver
from ..errors import AuthError, UnavailableError
from .peers import token_from_headers
from .socket_server import REFUSED_EVENT, SocketServer

if TYPE_CHECKING:  # the core builds this adapter; a runtime import would run back up
    from .realtime import Realtime

#: Why python-socketio says a socket went away; anything else is recorded as "disconnected".
DISCONNECT_REASONS = frozenset({"client disconnect", "server disconnect", "ping timeout", "transport close",
                                "transport error"})


def token_from_environ(environ: dict[str, Any], auth: Any) -> str | None:
    """The first token source present: ``auth.token``, Bearer header, ``jwt`` cookie, ``token`` query.

    Only that one is judged; a present but non-string ``auth.token`` is returned as "\\x00" (invalid).
    """
    if isinstance(auth, dict) and "token" in auth:
        token = auth["token"]
        return token if isinstance(token, str) else "\x00"
    from_headers = token_from_headers(environ.get("HTTP_AUTHORIZATION", ""), environ.get("HTTP_COOKIE", ""))
    if from_headers is not None:
        return from_headers
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if "token" in query:
        return query["token"][0]
    return None


class SocketIOPeer:
    """A Socket.IO socket as the transport-neutral events use it (:class:`~hq.realtime.peers.Peer`)."""

    __slots__ = ("socket_id", "_sio")

    def __init__(self, sio: SocketServer, socket_id: str) -> None:
        self.socket_id = socket_id
        self._sio = sio

    @property
    def transport(self) -> str:
        """``websocket`` or ``polling``, now (a polling socket may have upgraded)."""
        return str(self._sio.transport(self.socket_id))

    async def enter(self, room: str) -> None:
        """Join ``room`` in python-socketio's room table."""
        await self._sio.enter_room(self.socket_id, room)

    async def leave(self, room: str) -> None:
        """Leave ``room``."""
        await self._sio.leave_room(self.socket_id, room)

    async def send(self, event: str, payload: dict[str, Any]) -> None:
        """Emit ``event`` to this socket alone."""
        await self._sio.emit(event, payload, to=self.socket_id)

    async def end(self, reason: str) -> None:
        """Disconnect the socket and close its Engine.IO connection."""
        engineio_id = self._sio.manager.eio_sid_from_sid(self.socket_id, "/")
        await self._sio.disconnect(self.socket_id)
        if engineio_id is not None:
            # python-socketio leaves the Engine.IO connection for the client to close; a client that
            # ignores the DISCONNECT packet must not keep it (HQ serves one namespace).
            await self._sio.eio.disconnect(engineio_id)


class SocketIOTransport:
    """Connects python-socketio's ``connect``, ``disconnect`` and event handlers to the shared events."""

    def __init__(self, realtime: Realtime, sio: SocketServer, addresses: AddressResolver) -> None:
        self._realtime = realtime
        self._sio = sio
        self._addresses = addresses
        sio.on("connect", self._on_connect)
        sio.on("disconnect", self._on_disconnect)
        for name in realtime.CLIENT_EVENTS:
            sio.on(name, realtime.event(name))
        sio.on(REFUSED_EVENT, realtime.event(REFUSED_EVENT))  # answers not_found

    async def _on_connect(self, socket_id: str, environ: dict[str, Any], auth: Any = None) -> None:
        request = environ.get("aiohttp.request")
        address = self._addresses.client_address(request) if request is not None else "unknown"
        transport = self._sio.transport(socket_id)
        user_agent = environ.get("HTTP_USER_AGENT", "")
        try:
            principal = await self._realtime.identify(token_from_environ(environ, auth), address)
        except AuthError as exc:
            self._refuse(exc.code, exc.message, address, transport, user_agent)
        except UnavailableError:
            self._refuse("unavailable", "a backend is down; retry later", address, transport, user_agent)
        self._realtime.accept(SocketIOPeer(self._sio, socket_id), principal, address, user_agent)

    def _refuse(self, code: str, message: str, address: str, transport: str, user_agent: str) -> None:
        self._realtime.refused(code, address, transport, user_agent)
        raise socketio.exceptions.ConnectionRefusedError(f"Unauthorized: {message}", {"code": code})

    async def _on_disconnect(self, socket_id: str, reason: Any = None) -> None:
        await self._realtime.release(socket_id, reason if reason in DISCONNECT_REASONS else "disconnected")

    async def shutdown(self) -> None:
        """Close every Engine.IO session of this node, so that a graceful stop (SIGTERM) does not
        wait for live websockets and long-polls to time out."""
        sockets = list(self._sio.eio.sockets.values())
        if sockets:
            # HQ's lean sockets write the CLOSE packet, end a pending long-poll and close a websocket
            # at once (hq/realtime/engine.py); tests/test_shutdown.py fails if a client can hold the stop up.
            reason = self._sio.eio.reason.SERVER_DISCONNECT
            # A close still running after the wait is cancelled with the other background tasks.
            tasks = self._realtime.tasks
            await asyncio.wait([tasks.spawn(s.close(wait=False, reason=reason)) for s in sockets], timeout=5)
