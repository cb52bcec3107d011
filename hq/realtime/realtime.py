"""The Socket.IO server: connect (identify and attach), then join, leave, message, history, reauth, presence.

Handlers stay thin: they parse the payload, ask the authenticator, the clearance policy and the
store, and answer with the contract's ack shape. Every connection knows its token's expiry and its
login session, so expiry, logout and revocation end live sockets too.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.cookies import CookieError, SimpleCookie
from typing import Any, Awaitable, Callable, Coroutine, Protocol
from urllib.parse import parse_qs

import socketio

from ..addresses import AddressResolver
from ..audit import AuditLog, clip_free_text
from ..auth.clearance import ClearancePolicy
from ..clock import Clock, SystemClock, TimerHandle
from ..config import Settings
from ..errors import AuthError, EventError, UnavailableError
from .engine import ProtocolFaults
from .fanout import ClusterManager, LocalManager
from ..auth.identity import Authenticator, Principal
from ..auth.limits import TokenBucket
from ..cluster.presence import Presence
from ..cluster.routing import TopicBus
from ..cluster.socket_registry import ConnectionRegistry
from .schemas import PayloadSchemas
from .socket_server import REFUSED_EVENT, SocketServer
from ..store import Store
from ..tasks import BackgroundTasks
from .wire import SocketJSON

log = logging.getLogger(__name__)

Ack = dict[str, Any]
#: Why python-socketio says a socket went away; anything else is recorded as "disconnected".
DISCONNECT_REASONS = frozenset({"client disconnect", "server disconnect", "ping timeout", "transport close",
                                "transport error"})


@dataclass
class Connection:
    """What HQ knows about one live socket."""

    principal: Principal
    address: str
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


class RealtimeObserver(Protocol):
    """Told what the Socket.IO layer does (metrics listen); calls must be quick and never raise."""

    def event_handled(self, event: str, seconds: float, code: str | None) -> None:
        """A client event was answered, ``code`` None when it succeeded."""

    def message_stored(self, channel: str) -> None:
        """A message was durably stored on ``channel``."""

    def session_ended(self, reason: str) -> None:
        """A socket was told ``session_ended`` with ``reason``."""


def channel_room(channel: str) -> str:
    """The Socket.IO room a channel's members sit in."""
    return f"channel:{channel}"


def token_from_environ(environ: dict[str, Any], auth: Any) -> str | None:
    """The first token source present: ``auth.token``, Bearer header, ``jwt`` cookie, ``token`` query.

    Only that one is judged; a present but non-string ``auth.token`` is returned as "" (invalid).
    """
    if isinstance(auth, dict) and "token" in auth:
        token = auth["token"]
        return token if isinstance(token, str) else "\x00"
    header = environ.get("HTTP_AUTHORIZATION", "")
    if header:
        scheme, _, value = header.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else "\x00"
    cookie_header = environ.get("HTTP_COOKIE", "")
    if cookie_header:
        try:
            cookies = SimpleCookie(cookie_header)
        except CookieError:
            cookies = SimpleCookie()
        if "jwt" in cookies:
            return cookies["jwt"].value
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if "token" in query:
        return query["token"][0]
    return None


class Realtime:
    """Owns the python-socketio ``AsyncServer`` and the live connections of this HQ node.

    ``tasks`` runs its fire-and-forget work (expiry timers' work, handlers that wait, socket closes);
    ``bus`` (a cluster's: :class:`~hq.cluster.routing.TopicBus` over the process's Redis client, under
    its node id) carries each channel's broadcasts to the nodes with members in it.
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
        self._addresses = addresses
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
        self._register()

    def observe(self, observer: RealtimeObserver) -> None:
        """Report handled events, stored messages and ended sessions to ``observer``."""
        self._observers.append(observer)

    #: The events a client can reach; every other name is refused at the boundary (socket_server.py).
    CLIENT_EVENTS = frozenset({"join", "leave", "message", "history", "reauth", "presence"})

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

    def _register(self) -> None:
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", self._on_disconnect)
        handlers = {"join": self._join, "leave": self._leave, "message": self._message,
                    "history": self._history, "reauth": self._reauth, "presence": self._who_is_online}
        assert handlers.keys() == self.CLIENT_EVENTS
        for name, handler in handlers.items():
            self.sio.on(name, self._event(name, handler))
        self.sio.on(REFUSED_EVENT, self._event("unknown", self._unknown_event))

    # connect / disconnect ---------------------------------------------------------------------
    async def _on_connect(self, socket_id: str, environ: dict[str, Any], auth: Any = None) -> None:
        request = environ.get("aiohttp.request")
        address = self._addresses.client_address(request) if request is not None else "unknown"
        transport = self.sio.transport(socket_id)
        user_agent = environ.get("HTTP_USER_AGENT", "")
        try:
            principal = await self._auth.identify(token_from_environ(environ, auth))
        except AuthError as exc:
            self._refuse(exc.code, exc.message, address, transport, user_agent)
        except UnavailableError:
            # The store is down: the token may be fine, so not token_invalid (a client would drop it).
            self._refuse("unavailable", "a backend is down; retry later", address, transport, user_agent)
        except Exception:
            log.exception("connect handler failed")
            self._refuse("token_invalid", "could not verify the token", address, transport, user_agent)
        if principal.exp <= self._clock.time():
            # The verifier's leeway is for clock skew on HTTP; a socket would be ended at once.
            self._refuse("token_expired", "token has expired", address, transport, user_agent)
        limits = self._settings.limits
        connection = Connection(principal, address, transport, user_agent,
                                TokenBucket(limits.events_per_second, limits.events_burst))
        self._remember(socket_id, connection)
        self.connections.add(socket_id, session_id=principal.session_id, codename=principal.codename, address=address,
                             transport=transport, user_agent=clip_free_text(user_agent), exp=principal.exp)
        self._schedule_expiry(socket_id, connection)
        self._audit.record("connection_accepted", codename=principal.codename, address=address,
                           transport=transport, user_agent=user_agent)

    def _refuse(self, code: str, message: str, address: str, transport: str, user_agent: str) -> None:
        self._audit.record("connection_refused", code=code, address=address, transport=transport,
                           user_agent=user_agent)
        raise socketio.exceptions.ConnectionRefusedError(f"Unauthorized: {message}", {"code": code})

    async def _on_disconnect(self, socket_id: str, reason: Any = None) -> None:
        connection = self._forget(socket_id)
        if connection is None:
            return
        self.connections.remove(socket_id)
        if connection.timer is not None:
            connection.timer.cancel()
        await self._presence.left(socket_id, connection.principal.codename, connection.channels)
        self._audit.record("connection_ended", codename=connection.principal.codename,
                           address=connection.address, transport=connection.transport,
                           user_agent=connection.user_agent,
                           reason=connection.end_reason or (reason if reason in DISCONNECT_REASONS else "disconnected"))

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
        warn_at = exp - self._settings.auth.expiry_warning
        now = self._clock.time()
        if warn_at > now:
            connection.timer = self._clock.call_later(warn_at - now, self._spawn, self._warn_expiry, socket_id, exp)
        else:
            connection.timer = self._clock.call_later(max(0.0, exp - now), self._spawn, self._expire, socket_id, exp)
            if self._settings.auth.expiry_warning and exp > now:
                self._tasks.spawn(self.sio.emit("token_expiring", {"exp": exp}, to=socket_id), name="token-expiring")

    def _spawn(self, start: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        # The coroutine is made only when the timer fires: a cancelled timer leaves no
        # never-awaited coroutine (and no RuntimeWarning) behind.
        self._tasks.spawn(start(*args), name=start.__name__)

    async def _warn_expiry(self, socket_id: str, exp: int) -> None:
        connection = self._connections.get(socket_id)
        if connection is None or connection.principal.exp != exp:
            return
        await self.sio.emit("token_expiring", {"exp": exp}, to=socket_id)
        connection.timer = self._clock.call_later(max(0.0, exp - self._clock.time()), self._spawn, self._expire,
                                                  socket_id, exp)

    async def _expire(self, socket_id: str, exp: int) -> None:
        connection = self._connections.get(socket_id)
        if connection is not None and connection.principal.exp == exp:
            await self.end_socket(socket_id, "token_expired")

    # ending sockets -----------------------------------------------------------------------------
    async def end_socket(self, socket_id: str, reason: str) -> None:
        """Tell one socket why its session ended, then disconnect it."""
        connection = self._connections.get(socket_id)
        if connection is None or connection.end_reason is not None:
            return
        # From here on the socket's events are refused, though it stays until it is disconnected.
        connection.end_reason = reason
        for observer in self._observers:
            observer.session_ended(reason)
        await self.sio.emit("session_ended", {"reason": reason}, to=socket_id)
        engineio_id = self.sio.manager.eio_sid_from_sid(socket_id, "/")
        await self.sio.disconnect(socket_id)
        if engineio_id is not None:
            # python-socketio leaves the Engine.IO connection for the client to close; a client that
            # ignores the DISCONNECT packet must not keep it (HQ serves one namespace).
            await self.sio.eio.disconnect(engineio_id)

    async def end_sessions(self, codename: str, session_id: str | None, reason: str) -> int:
        """End this node's sockets of one login session, or of every session of ``codename``."""
        found = self._by_session.get(session_id) if session_id else self._by_codename.get(codename.lower())
        targets = [s for s in found if (c := self._connections.get(s)) is not None and c.end_reason is None]
        await asyncio.gather(*(self.end_socket(s, reason) for s in targets))
        return len(targets)

    def start(self) -> None:
        """Start the Socket.IO layer's background work (a cluster's catch-up from the store)."""
        self.sio.manager.start()

    async def stop(self) -> None:
        """Stop it."""
        await self.sio.manager.stop()

    async def shutdown(self, app: object = None) -> None:
        """Close every Engine.IO session of this node, so that a graceful stop (SIGTERM) does not
        wait for live websockets and long-polls to time out (aiohttp's on_shutdown signal)."""
        sockets = list(self.sio.eio.sockets.values())
        if sockets:
            # HQ's lean sockets write the CLOSE packet, end a pending long-poll and close a websocket
            # at once (hq/realtime/engine.py); tests/test_shutdown.py fails if a client can hold the stop up.
            reason = self.sio.eio.reason.SERVER_DISCONNECT
            # A close still running after the wait is cancelled with the other background tasks.
            await asyncio.wait([self._tasks.spawn(s.close(wait=False, reason=reason)) for s in sockets], timeout=5)

    def _current_transport(self, socket_id: str) -> str | None:
        """The socket's transport now (it may have upgraded from polling since it connected)."""
        try:
            return self.sio.transport(socket_id)
        except (KeyError, TypeError):  # gone meanwhile
            return None

    @property
    def connection_count(self) -> int:
        """Live authenticated sockets on this node."""
        return len(self._connections)

    # events -------------------------------------------------------------------------------------
    def _event(self, name: str, handler: Callable[[str, Connection, Any], Awaitable[Ack]]
               ) -> Callable[..., Awaitable[Ack]]:
        @functools.wraps(handler)
        async def run(socket_id: str, *args: Any) -> Ack:
            started = time.perf_counter()
            connection = self._connections.get(socket_id)
            try:
                if connection is None or connection.end_reason is not None:
                    raise EventError("not connected", "forbidden")
                if not connection.bucket.take():
                    raise EventError("too many events; slow down", "rate_limited")
                ack = await handler(socket_id, connection, args[0] if len(args) == 1 else None)
                code = None
            except (EventError, AuthError, UnavailableError) as exc:
                # UnavailableError: a backend (the database) is down; the socket stays, the client retries.
                ack, code = {"ok": False, "error": {"code": exc.code, "message": exc.message}}, exc.code
            except Exception:
                log.exception("%s handler failed", name)
                ack, code = {"ok": False, "error": {"code": "internal", "message": "internal error"}}, "internal"
            for observer in self._observers:
                observer.event_handled(name, time.perf_counter() - started, code)
            return ack
        return run

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
        await self.sio.enter_room(socket_id, channel_room(channel))
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
        await self.sio.leave_room(socket_id, channel_room(channel))
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
        principal = await self._auth.identify(self._schemas.decode("reauth", payload).token)
        if principal.codename != connection.principal.codename:
            raise AuthError("token belongs to another agent", "token_invalid")
        if principal.session_id != connection.principal.session_id:  # a token of another of its sessions
            self._by_session.discard(connection.principal.session_id, socket_id)
            self._by_session.add(principal.session_id, socket_id)
        connection.principal = principal
        self.connections.update_expiry(socket_id, principal.exp)
        demoted = [c for c in connection.channels if not self._policy.may_read(principal.role, c)]
        for channel in demoted:
            await self.sio.leave_room(socket_id, channel_room(channel))
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
