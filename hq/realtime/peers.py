"""A live socket as the events see it, whatever carries it: the transport-neutral connection.

HQ has two real-time transports, Socket.IO (``/socket.io/``, hq/realtime/socketio_transport.py) and
the plain WebSocket (``/ws``, ``/ws/{channel}``, ``/missions``; hq/realtime/plainws/). The events
(join, leave, message, history, reauth, presence), clearance, the event budget, expiry timers,
revocation, presence, metrics and audit are written once (hq/realtime/realtime.py) over a
:class:`Peer`: each transport answers only how a socket enters and leaves a room, how one event
reaches one socket, and how a socket is closed once its session has ended.
"""

from __future__ import annotations

from http.cookies import CookieError, SimpleCookie

from dataclasses import dataclass, field
from typing import Any, Protocol

from ..auth.identity import Principal
from ..auth.limits import TokenBucket
from ..clock import TimerHandle

#: An event's answer: ``{"ok": true, ...}`` or ``{"ok": false, "error": {"code", "message"}}``.
Ack = dict[str, Any]

#: The plain WebSocket's transport, as audit lines, metrics and the directors' API name it (Socket.IO's
#: are ``websocket`` and ``polling``).
PLAIN_WEBSOCKET = "plain_websocket"


class Peer(Protocol):
    """One live socket of one transport, as the transport-neutral events use it."""

    @property
    def socket_id(self) -> str:
        """The socket's id on this node (unique across both transports)."""

    @property
    def transport(self) -> str:
        """``websocket`` or ``polling`` (Socket.IO; a polling socket may upgrade) or ``plain_websocket``."""

    async def enter(self, room: str) -> None:
        """Become a member of ``room`` in the node's one room table (delivery and cluster routing)."""

    async def leave(self, room: str) -> None:
        """Stop being a member of ``room`` (nothing happens if it was not one)."""

    async def send(self, event: str, payload: dict[str, Any]) -> None:
        """Push one HQ → client event to this socket alone."""

    async def end(self, reason: str) -> None:
        """Close the socket after it was told ``session_ended`` with ``reason`` (each transport its way)."""


@dataclass
class Connection:
    """What HQ knows about one live, authenticated socket."""

    peer: Peer
    principal: Principal
    address: str
    #: As it connected (audit lines name this one; a polling socket may upgrade later).
    transport: str
    user_agent: str
    bucket: TokenBucket
    channels: set[str] = field(default_factory=set)
    timer: TimerHandle | None = None
    end_reason: str | None = None


class SocketIndex:
    """Socket ids by a key (a login session id, a lower-case codename), for lookups without a scan."""

    def __init__(self) -> None:
        self._sockets: dict[str, set[str]] = {}

    def add(self, key: str, socket_id: str) -> None:
        """File ``socket_id`` under ``key``."""
        self._sockets.setdefault(key, set()).add(socket_id)

    def discard(self, key: str, socket_id: str) -> None:
        """Take ``socket_id`` out from under ``key`` (a key left empty is forgotten)."""
        sockets = self._sockets.get(key)
        if sockets is not None:
            sockets.discard(socket_id)
            if not sockets:
                del self._sockets[key]

    def get(self, key: str) -> list[str]:
        """The socket ids filed under ``key`` (a copy: ending them changes the index)."""
        return list(self._sockets.get(key, ()))

    def __len__(self) -> int:
        return len(self._sockets)


def token_from_headers(authorization: str, cookie_header: str) -> str | None:
    """The token of a handshake's headers, for every transport: ``Authorization: Bearer``, else the
    ``jwt`` cookie; None when neither is there.

    An ``Authorization`` header of another scheme is an invalid token ("\\x00"), not a reason to look
    further: only the first source present is judged (contract §4 and §8).
    """
    if authorization:
        scheme, _, value = authorization.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else "\x00"
    if cookie_header:
        try:
            cookies = SimpleCookie(cookie_header)
        except CookieError:
            cookies = SimpleCookie()
        if "jwt" in cookies:
            return cookies["jwt"].value
    return None
