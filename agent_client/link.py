"""One Socket.IO connection to HQ: open it, call events with acks, notice how it ended.

A :class:`Link` never reconnects by itself (python-socketio's own reconnection is off): the client
decides after each ending whether to refresh, reconnect or stop, which the library cannot know.
Each reconnect gets a fresh ``Link``, so nothing from an old socket leaks into a new one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

import aiohttp
import socketio

from .errors import (AgentClientError, AgentDisabled, ConnectionLost, ConnectionRefused, Unavailable,
                     error_for)
from .messages import Message

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 15.0
CALL_TIMEOUT = 30.0

MessageHandler = Callable[[Message], None]
NoticeHandler = Callable[[Any], None]


class Link:
    """A single python-socketio ``AsyncClient`` connection and its pending acknowledgements."""

    def __init__(self, url: str, http: aiohttp.ClientSession, verify: bool, transports: list[str] | None,
                 on_message: MessageHandler, on_token_expiring: NoticeHandler) -> None:
        #: The HQ node this socket goes to.
        self.url = url
        self._transports = transports
        self._on_message = on_message
        self._on_token_expiring = on_token_expiring
        self.sio = socketio.AsyncClient(reconnection=False, http_session=http, ssl_verify=verify,
                                        handle_sigint=False, logger=False, engineio_logger=False)
        #: Set once the connection is over (or never opened).
        self.ended = asyncio.Event()
        #: The ``session_ended`` reason HQ gave before disconnecting, if any.
        self.end_reason: str | None = None
        #: The access token this socket is authenticated with (updated by ``reauth``).
        self.token: str | None = None
        self._refusal: dict[str, Any] | None = None
        self._pending: set[asyncio.Future[Any]] = set()
        self._register()

    def _register(self) -> None:
        # Handlers are plain functions: python-socketio runs each incoming packet as its own task,
        # and synchronous handlers run in arrival order, which message ordering relies on.
        self.sio.on("connect_error", self._connect_error)
        self.sio.on("disconnect", self._disconnected)
        self.sio.on("message", self._message)
        self.sio.on("token_expiring", self._on_token_expiring)
        self.sio.on("session_ended", self._session_ended)

    @property
    def connected(self) -> bool:
        """Whether the socket is up."""
        return self.sio.connected and not self.ended.is_set()

    async def open(self, token_source: Callable[[], str]) -> None:
        """Connect with ``auth={"token": token_source()}``; raises :class:`ConnectionRefused`,
        :class:`AgentDisabled` or :class:`Unavailable`."""

        def auth() -> dict[str, str]:
            # python-socketio calls this when the transport is up, so the freshest token is sent.
            self.token = token_source()
            return {"token": self.token}

        try:
            await self.sio.connect(self.url, auth=auth, transports=self._transports,
                                   wait_timeout=CONNECT_TIMEOUT)
        except socketio.exceptions.ConnectionError as exc:
            self.ended.set()
            raise self._refusal_error() or Unavailable(f"cannot connect to HQ: {exc}") from None
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
            self.ended.set()
            raise Unavailable(f"cannot connect to HQ: {type(exc).__name__}") from None

    async def call(self, event: str, payload: Any, timeout: float = CALL_TIMEOUT) -> dict[str, Any]:
        """Emit ``event`` and wait for its ack; ``{"ok": false}`` answers raise the typed error."""
        if not self.connected:
            raise ConnectionLost("not connected to HQ")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def acknowledge(*args: Any) -> None:
            if not future.done():
                future.set_result(args[0] if args else None)

        self._pending.add(future)
        try:
            await self.sio.emit(event, payload, callback=acknowledge)
            answer = await asyncio.wait_for(future, timeout)
        except socketio.exceptions.SocketIOError:
            raise ConnectionLost("the connection to HQ dropped") from None
        except asyncio.TimeoutError:
            raise ConnectionLost(f"HQ did not answer {event!r} within {timeout:g} s") from None
        finally:
            self._pending.discard(future)
        return _check_ack(answer)

    async def close(self) -> None:
        """Disconnect (idempotent)."""
        try:
            if self.sio.connected:
                await self.sio.disconnect()
            else:
                await self.sio.eio.disconnect(abort=True)
        except Exception as exc:  # already gone: nothing to do but note it
            log.debug("closing the socket: %s", type(exc).__name__)
        self._end()

    # handlers --------------------------------------------------------------------------------------
    def _connect_error(self, data: Any = None) -> None:
        # HQ's refusals are {"message", "data": {"code"}}; a transport failure is a bare string.
        if isinstance(data, dict):
            self._refusal = data

    def _disconnected(self, reason: Any = None) -> None:
        self._end()

    def _message(self, data: Any) -> None:
        message = Message.from_wire(data)
        if message is None:
            log.warning("ignoring a malformed message from HQ")
            return
        self._on_message(message)

    def _session_ended(self, data: Any = None) -> None:
        reason = data.get("reason") if isinstance(data, dict) else None
        self.end_reason = reason if isinstance(reason, str) else "unknown"

    def _end(self) -> None:
        self.ended.set()
        for future in self._pending:
            if not future.done():
                future.set_exception(ConnectionLost("the connection to HQ dropped before the answer"))

    def _refusal_error(self) -> AgentClientError | None:
        if self._refusal is None:
            return None
        data = self._refusal.get("data")
        code = data.get("code") if isinstance(data, dict) else None
        message = str(self._refusal.get("message") or "refused")
        if code == "agent_disabled":
            return AgentDisabled(message)
        if code == "unavailable":  # HQ's store is down: the token is fine, try again later
            return Unavailable(message)
        return ConnectionRefused(message, code if isinstance(code, str) else "connection_refused")


def _check_ack(answer: Any) -> dict[str, Any]:
    if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
        raise error_for("internal", "HQ sent an unexpected answer")
    if answer["ok"]:
        return answer
    error = answer.get("error")
    if not isinstance(error, dict):
        raise error_for("internal", "HQ refused without saying why")
    raise error_for(error.get("code"), error.get("message"))
