"""The real-time events, written once for every transport: join, leave, message, history, reauth,
presence, and what happens to live sockets (expiry warnings, session ends, presence, audit, metrics).

Handlers stay thin: they parse the payload, ask the authenticator, the clearance policy and the
store, and answer with the contract's ack shape. They work on a transport-neutral
:class:`~hq.realtime.peers.Connection` whose :class:`~hq.realtime.peers.Peer` is a Socket.IO socket
(hq/realtime/socketio_transport.py) or a plain WebSocket (hq/realtime/plainws/): a transport admits
a socket (:meth:`Realtime.identify`, then :meth:`Realtime.accept` or :meth:`Realtime.refused`),
hands it each client event (:meth:`Realtime.handle`), and reports it gone (:meth:`Realtime.release`);
everything else is decided here, once. Every connection knows its token's expiry and its login
session, so expiry, logout and revocation end live sockets of both transports.

Delivery goes through one room table, the Socket.IO server's manager (hq/realtime/fanout.py): a
plain WebSocket enters the same rooms, so a broadcast to a channel reaches the members of both
transports on this node, and a cluster routes a channel to every node with a member of either kind.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Coroutine, Protocol

from ..addresses import AddressResolver
from ..audit import AuditLog, clip_free_text
from ..auth.clearance import ClearancePolicy
from ..clock import Clock, SystemClock
from ..config import Settings
from ..errors import AuthError, EventError, UnavailableError
from .engine import ProtocolFaults
from .fanout import ClusterManager, LocalManager
from ..auth.identity import Authenticator, Principal
from ..auth.limits import TokenBucket
from ..cluster.presence import Presence
from ..cluster.routing import TopicBus
from ..cluster.socket_registry import ConnectionRegistry
from .peers import Ack, Connection, Peer, SocketIndex
from .schemas import PayloadSchemas
from .socket_server import SocketServer
from .socketio_transport import SocketIOTransport
from ..store import Store
from ..tasks import BackgroundTasks
from .wire import SocketJSON

log = logging.getLogger(__name__)

#: Handler of one client event: the socket's id, its connection and the payload, to the answer.
Handler = Callable[[str, Connection, Any], Awaitable[Ack]]
#: The pseudo-events every transport may hand :meth:`Realtime.handle`: a name HQ does not serve
#: (``not_found``) and a frame that is no event at all (``bad_request``; the plain WebSocket's).
UNKNOWN_EVENT, MALFORMED_EVENT = "unknown", "malformed"


class RealtimeObserver(Protocol):
    """Told what the real-time layer does (metrics listen); calls must be quick and never raise."""

    def event_handled(self, event: str, seconds: float, code: str | None, transport: str) -> None:
        """A client event was answered on ``transport``, ``code`` None when it succeeded."""

    def message_stored(self, channel: str) -> None:
        """A message was durably stored on ``channel``."""

    def session_ended(self, reason: str) -> None:
        """A socket was told ``session_ended`` with ``reason``."""


def channel_room(channel: str) -> str:
    """The Socket.IO room a channel's members sit in."""
    return f"channel:{channel}"


class Realtime:
    """The live sockets of this HQ node, of both transports, and the events they may send.

    ``sio`` is the python-socketio server: the Socket.IO transport, and the node's one room table
    and fan-out (hq/realtime/fanout.py) that the plain WebSocket shares. ``tasks`` runs its
    fire-and-forget work (expiry timers' work, handlers that wait, socket closes); ``bus`` (a
    cluster's: :class:`~hq.cluster.routing.TopicBus` over the process's Redis client, under its node
    id) carries each channel's broadcasts to the nodes with members in it.
    """

    def __init__(self, settings: Settings, authenticator: Authenticator, policy: ClearancePolicy,
                 store: Store, audit: AuditLog, addresses: AddressResolver, presence: Presence | None = None,
                 connections: ConnectionRegistry | None = None, tasks: BackgroundTasks | None = None,
                 bus: TopicBus | None = None, clock: Clock | None = None) -> None:
        self._settings = settings
        self._clock = SystemClock() if clock is None else clock  # token expiry on live sockets
        self._tasks = tasks if tasks is not None else BackgroundTasks()
        self._auth = authenticator
        self._policy = policy
        self._store = store
        self._audit = audit
        self._schemas = PayloadSchemas(settings.limits.history_max)
        self._presence = presence if presence is not None else Presence(settings.channels)
        self._presence.on_change(self._announce_presence)
        self._connections: dict[str, Connection] = {}
        # Revocation ends one session's or one agent's sockets: found here, never by a scan of them all.
        self._by_session = SocketIndex()
        self._by_codename = SocketIndex()  # lower-case codename
        #: Every live socket of the cluster, for the directors' API (this node's written in memory only).
        self.connections = connections if connections is not None else ConnectionRegistry()
        self.connections.follow_transports(self._current_transport)
        self._observers: list[RealtimeObserver] = []
        self.faults = ProtocolFaults()
        self.sio = self._create_server(settings, self.faults, store, self._tasks, bus, self._clock)
        self._handlers: dict[str, Handler] = {
            "join": self._join, "leave": self._leave, "message": self._message, "history": self._history,
            "reauth": self._reauth, "presence": self._who_is_online}
        assert self._handlers.keys() == self.CLIENT_EVENTS
        #: The Socket.IO transport (``/socket.io/``); the plain WebSocket is built beside it (hq/app.py).
        self.socketio = SocketIOTransport(self, self.sio, addresses)

    def observe(self, observer: RealtimeObserver) -> None:
        """Report handled events, stored messages and ended sessions to ``observer``."""
        self._observers.append(observer)

    #: The events a client can reach; every other name answers ``not_found`` (both transports).
    CLIENT_EVENTS = frozenset({"join", "leave", "message", "history", "reauth", "presence"})

    @property
    def clock(self) -> Clock:
        """The clock live sockets' timers run on (a :class:`~hq.clock.ManualClock` in tests)."""
        return self._clock

    @property
    def schemas(self) -> PayloadSchemas:
        """The one validation of every client payload (the plain WebSocket's ``auth`` frame included)."""
        return self._schemas

    @property
    def tasks(self) -> BackgroundTasks:
        """Where fire-and-forget work of the real-time layer runs (ended at shutdown)."""
        return self._tasks

    @classmethod
    def _create_server(cls, settings: Settings, faults: ProtocolFaults, store: Store, tasks: BackgroundTasks,
                       bus: TopicBus | None, clock: Clock) -> SocketServer:
        manager: LocalManager | ClusterManager = LocalManager()
        if bus is not None:
            manager = ClusterManager(bus, prefix=settings.cluster.channel, store=store, room_of=channel_room,
                                     tasks=tasks, clock=clock, catch_up=settings.cluster.catch_up_interval)
        return SocketServer(
            client_events=cls.CLIENT_EVENTS,
            faults=faults,
            background=tasks,
            keep_environ=settings.admin.enabled,  # the Admin UI shows each socket's handshake
            max_buffered_bytes=settings.server.max_buffered_bytes,
            websocket_compression=settings.server.websocket_compression,
            async_mode="aiohttp",
            client_manager=manager,
            cors_allowed_origins=list(settings.server.allowed_origins),
            cors_credentials=True,
            max_http_buffer_size=settings.server.max_packet_bytes,
            ping_interval=settings.server.ping_interval,
            ping_timeout=settings.server.ping_timeout,
            http_compression=False,
            json=SocketJSON,
            logger=False,
            engineio_logger=False,
        )

    # admitting and releasing sockets (every transport) -----------------------------------------
    async def identify(self, token: str | None, address: str) -> Principal:
        """Who ``token`` (an access token or a service key) belongs to, for a socket about to be
        accepted from ``address`` (a wrong service key counts as a failed login for it).

        Raises :class:`~hq.errors.AuthError` (the contract's token codes) or
        :class:`~hq.errors.UnavailableError` (the store is down: the token may be fine, so never
        ``token_invalid``, which a client would drop). Anything else is logged and refused as
        ``token_invalid``: a connect that fails in any way refuses the socket.
        """
        try:
            principal = await self._auth.identify(token, service_key_address=address)
        except (AuthError, UnavailableError):
            raise
        except Exception:
            log.exception("identifying a socket failed")
            raise AuthError("could not verify the token", "token_invalid") from None
        if principal.exp is not None and principal.exp <= self._clock.time():
            # The verifier's leeway is for clock skew on HTTP; a socket would be ended at once.
            raise AuthError("token has expired", "token_expired")
        return principal

    def refused(self, code: str, address: str, transport: str, user_agent: str, **fields: Any) -> None:
        """Record a socket refused with ``code`` (audit, and through it metrics)."""
        self._audit.record("connection_refused", code=code, address=address, transport=transport,
                           user_agent=user_agent, **fields)

    def accept(self, peer: Peer, principal: Principal, address: str, user_agent: str) -> Connection:
        """Count an identified socket as live: indexed for revocation, registered for the directors'
        API, its expiry timed, audited. Its events are handled from now on."""
        limits = self._settings.limits
        socket_id, transport = peer.socket_id, peer.transport
        connection = Connection(peer, principal, address, transport, user_agent,
                                TokenBucket(limits.events_per_second, limits.events_burst))
        self._remember(socket_id, connection)
        self.connections.add(socket_id, session_id=principal.session_id, codename=principal.codename, address=address,
                             transport=transport, user_agent=clip_free_text(user_agent), exp=principal.exp)
        self._schedule_expiry(socket_id, connection)
        self._audit.record("connection_accepted", codename=principal.codename, address=address,
                           transport=transport, user_agent=user_agent)
        return connection

    async def release(self, socket_id: str, reason: str) -> None:
        """The socket is gone (``reason``: the transport's word for why, unless HQ ended its session):
        out of its rooms, presence, indexes and registry; audited."""
        connection = self._forget(socket_id)
        if connection is None:
            return
        self.connections.remove(socket_id)
        if connection.timer is not None:
            connection.timer.cancel()
        for channel in connection.channels:
            await connection.peer.leave(channel_room(channel))
        await self._presence.left(socket_id, connection.principal.codename, connection.channels)
        self._audit.record("connection_ended", codename=connection.principal.codename,
                           address=connection.address, transport=connection.transport,
                           user_agent=connection.user_agent, reason=connection.end_reason or reason)

    def connection(self, socket_id: str) -> Connection | None:
        """The live connection of ``socket_id`` (None once it is gone)."""
        return self._connections.get(socket_id)

    def _remember(self, socket_id: str, connection: Connection) -> None:
        """Count a live socket, found from now on by its session and its agent."""
        self._connections[socket_id] = connection
        self._by_session.add(connection.principal.session_id, socket_id)
        self._by_codename.add(connection.principal.codename.lower(), socket_id)

    def _forget(self, socket_id: str) -> Connection | None:
        """The socket is gone: its connection, no longer counted (None if it was not)."""
        connection = self._connections.pop(socket_id, None)
        if connection is not None:
            self._by_session.discard(connection.principal.session_id, socket_id)
            self._by_codename.discard(connection.principal.codename.lower(), socket_id)
        return connection

    # expiry -------------------------------------------------------------------------------------
    def _schedule_expiry(self, socket_id: str, connection: Connection) -> None:
        if connection.timer is not None:
            connection.timer.cancel()
        exp = connection.principal.exp
        if exp is None:  # a service key does not expire: it is revoked
            connection.timer = None
            return
        warn_at = exp - self._settings.auth.expiry_warning
        now = self._clock.time()
        if warn_at > now:
            connection.timer = self._clock.call_later(warn_at - now, self._spawn, self._warn_expiry, socket_id, exp)
        else:
            connection.timer = self._clock.call_later(max(0.0, exp - now), self._spawn, self._expire, socket_id, exp)
            if self._settings.auth.expiry_warning and exp > now:
                self._tasks.spawn(connection.peer.send("token_expiring", {"exp": exp}), name="token-expiring")

    def _spawn(self, start: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        # The coroutine is made only when the timer fires: a cancelled timer leaves no
        # never-awaited coroutine (and no RuntimeWarning) behind.
        self._tasks.spawn(start(*args), name=start.__name__)

    async def _warn_expiry(self, socket_id: str, exp: int) -> None:  # only for a token that expires
        connection = self._connections.get(socket_id)
        if connection is None or connection.principal.exp != exp:
            return
        await connection.peer.send("token_expiring", {"exp": exp})
        connection.timer = self._clock.call_later(max(0.0, exp - self._clock.time()), self._spawn, self._expire,
                                                  socket_id, exp)

    async def _expire(self, socket_id: str, exp: int) -> None:
        connection = self._connections.get(socket_id)
        if connection is not None and connection.principal.exp == exp:
            await self.end_socket(socket_id, "token_expired")

    # ending sockets -----------------------------------------------------------------------------
    async def end_socket(self, socket_id: str, reason: str) -> None:
        """Tell one socket why its session ended, then close it (its transport's way)."""
        connection = self._connections.get(socket_id)
        if connection is None or connection.end_reason is not None:
            return
        # From here on the socket's events are refused, though it stays until it is disconnected.
        connection.end_reason = reason
        for observer in self._observers:
            observer.session_ended(reason)
        await connection.peer.send("session_ended", {"reason": reason})
        await connection.peer.end(reason)

    async def end_sessions(self, codename: str, session_id: str | None, reason: str) -> int:
        """End this node's sockets of one login session, or of every session of ``codename``."""
        found = self._by_session.get(session_id) if session_id else self._by_codename.get(codename.lower())
        targets = [s for s in found if (c := self._connections.get(s)) is not None and c.end_reason is None]
        await asyncio.gather(*(self.end_socket(s, reason) for s in targets))
        return len(targets)

    def start(self) -> None:
        """Start the real-time layer's background work (a cluster's catch-up from the store)."""
        self.sio.manager.start()

    async def stop(self) -> None:
        """Stop it."""
        await self.sio.manager.stop()

    async def shutdown(self, app: object = None) -> None:
        """Close this node's Socket.IO sockets at once (aiohttp's on_shutdown signal; the plain
        WebSocket closes its own with 1001)."""
        await self.socketio.shutdown()

    def _current_transport(self, socket_id: str) -> str | None:
        """The socket's transport now (a Socket.IO socket may have upgraded from polling since it connected)."""
        connection = self._connections.get(socket_id)
        if connection is None:
            return None
        try:
            return connection.peer.transport
        except (KeyError, TypeError):  # gone meanwhile
            return None

    @property
    def connection_count(self) -> int:
        """Live authenticated sockets on this node (both transports)."""
        return len(self._connections)

    # events -------------------------------------------------------------------------------------
    async def handle(self, socket_id: str, event: str, payload: Any) -> Ack:
        """Answer one client event of a live socket (any transport): the event budget, the handler,
        the contract's error answers, metrics. ``event`` may be any name (unknown ones answer
        ``not_found``) or :data:`MALFORMED_EVENT` (``payload`` then says what was wrong)."""
        if event == MALFORMED_EVENT:
            return await self._run(MALFORMED_EVENT, self._malformed, socket_id, payload)
        handler = self._handlers.get(event)
        if handler is None:
            return await self._run(UNKNOWN_EVENT, self._unknown_event, socket_id, payload)
        return await self._run(event, handler, socket_id, payload)

    def event(self, name: str) -> Callable[..., Awaitable[Ack]]:
        """``name``'s handler in python-socketio's calling convention (``socket_id, *args``)."""
        handler = self._handlers.get(name, self._unknown_event)
        label = name if name in self._handlers else UNKNOWN_EVENT

        @functools.wraps(handler)
        async def run(socket_id: str, *args: Any) -> Ack:
            return await self._run(label, handler, socket_id, args[0] if len(args) == 1 else None)
        return run

    async def _run(self, name: str, handler: Handler, socket_id: str, payload: Any) -> Ack:
        started = time.perf_counter()
        connection = self._connections.get(socket_id)
        transport = "unknown"
        try:
            if connection is None or connection.end_reason is not None:
                raise EventError("not connected", "forbidden")
            transport = connection.transport
            if not connection.bucket.take():
                raise EventError("too many events; slow down", "rate_limited")
            ack = await handler(socket_id, connection, payload)
            code = None
        except (EventError, AuthError, UnavailableError) as exc:
            # UnavailableError: a backend (the database) is down; the socket stays, the client retries.
            ack, code = {"ok": False, "error": {"code": exc.code, "message": exc.message}}, exc.code
        except Exception:
            log.exception("%s handler failed", name)
            ack, code = {"ok": False, "error": {"code": "internal", "message": "internal error"}}, "internal"
        for observer in self._observers:
            observer.event_handled(name, time.perf_counter() - started, code, transport)
        return ack

    async def _malformed(self, socket_id: str, connection: Connection, payload: Any) -> Ack:
        raise EventError(str(payload), "bad_request")

    async def _unknown_event(self, socket_id: str, connection: Connection, payload: Any) -> Ack:
        raise EventError("no such event", "not_found")

    def _channel(self, channel: str) -> str:
        if not self._policy.exists(channel):
            raise EventError(f"no channel named {channel[:64]!r}", "not_found")
        return channel

    def _require_read(self, connection: Connection, channel: str) -> None:
        if not self._policy.may_read(connection.principal.role, channel):
            raise EventError(f"your clearance may not read {channel!r}", "forbidden")

    async def _join(self, socket_id: str, connection: Connection, payload: Any) -> Ack:
        channel = self._channel(self._schemas.decode("join", payload).channel)
        self._require_read(connection, channel)
        # In the room before last_id is read: a message stored in between is delivered live (its id
        # is at most last_id, which clients take as a duplicate), never lost between the two.
        await connection.peer.enter(channel_room(channel))
        connection.channels.add(channel)
        await self._presence.joined(channel, socket_id, connection.principal.codename, connection.principal.role)
        try:
            last_id = await self._store.last_message_id(channel)
        except UnavailableError:
            await self._leave(socket_id, connection, payload)  # not joined: the client retries later
            raise
        self.sio.manager.channel_joined(channel, last_id)
        return {"ok": True, "channel": channel, "last_id": last_id}

    async def _leave(self, socket_id: str, connection: Connection, payload: Any) -> Ack:
        channel = self._channel(self._schemas.decode("leave", payload).channel)
        await connection.peer.leave(channel_room(channel))
        connection.channels.discard(channel)
        await self._presence.left(socket_id, connection.principal.codename, [channel])
        return {"ok": True}

    async def _message(self, socket_id: str, connection: Connection, payload: Any) -> Ack:
        request = self._schemas.decode("message", payload)
        channel, text = self._channel(request.channel), request.text
        max_bytes = self._settings.limits.text_max_bytes
        try:
            size = len(text.encode("utf-8")) if len(text) <= max_bytes else max_bytes + 1
        except UnicodeEncodeError:
            raise EventError("text is not valid Unicode", "bad_request") from None
        if size > max_bytes:
            raise EventError(f"text is over {max_bytes} bytes", "payload_too_large")
        if not self._policy.may_write(connection.principal.role, channel):
            raise EventError(f"your clearance may not write to {channel!r}", "forbidden")
        ts = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        message = await self._store.add_message(channel, connection.principal.codename, text, ts)
        for observer in self._observers:
            observer.message_stored(channel)
        await self.sio.emit("message", message.to_wire(), room=channel_room(channel), skip_sid=socket_id)
        return {"ok": True, "id": message.id}

    async def _history(self, socket_id: str, connection: Connection, payload: Any) -> Ack:
        request = self._schemas.decode("history", payload)
        channel = self._channel(request.channel)
        self._require_read(connection, channel)
        messages = await self._store.history(channel, request.after_id, request.limit)
        # Retention is not implemented yet: every message after after_id is still kept.
        return {"ok": True, "messages": [m.to_wire() for m in messages], "truncated": False}

    async def _reauth(self, socket_id: str, connection: Connection, payload: Any) -> Ack:
        principal = await self._auth.identify(self._schemas.decode("reauth", payload).token,
                                              service_key_address=connection.address)
        if principal.codename != connection.principal.codename:
            raise AuthError("token belongs to another agent", "token_invalid")
        if principal.session_id != connection.principal.session_id:  # a token of another of its sessions
            self._by_session.discard(connection.principal.session_id, socket_id)
            self._by_session.add(principal.session_id, socket_id)
        connection.principal = principal
        self.connections.update_expiry(socket_id, principal.exp)
        demoted = [c for c in connection.channels if not self._policy.may_read(principal.role, c)]
        for channel in demoted:
            await connection.peer.leave(channel_room(channel))
            connection.channels.discard(channel)
        await self._presence.left(socket_id, principal.codename, demoted)
        self._schedule_expiry(socket_id, connection)
        return {"ok": True, "exp": principal.exp}

    async def _who_is_online(self, socket_id: str, connection: Connection, payload: Any) -> Ack:
        channel = self._channel(self._schemas.decode("presence", payload).channel)
        self._require_read(connection, channel)
        agents = await self._presence.members(channel)
        return {"ok": True, "agents": [agent.to_wire() for agent in agents]}

    async def _announce_presence(self, channel: str, codename: str, online: bool) -> None:
        # Through the manager: with Redis it reaches the channel's members on every node.
        await self.sio.emit("presence", {"channel": channel, "codename": codename, "online": online},
                            room=channel_room(channel))
