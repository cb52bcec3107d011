"""``AgentClient``: a field agent's resilient connection to HQ.

Log in over HTTP, connect one Socket.IO socket, join channels, send, read history and receive
every channel message exactly once and in id order: by callback (:meth:`AgentClient.on_message`)
and by ``async for message in client``. The stream of a channel includes this client's own sends
(HQ does not echo them live, so the client fetches them), so every id shows up exactly once.

Three background tasks keep it alive:

* the *renewer* refreshes the access token before it expires (and when HQ sends
  ``token_expiring``) and hands the new one to the live socket with ``reauth``;
* the *supervisor* waits for the socket to end and then reconnects with backoff and a fresh
  token, re-joins the channels and catches up on what it missed with ``history``; a terminal
  refusal (disabled agent, logout, revoked or reused session) stops the client instead. Given
  several HQ nodes, it moves to the next one when the socket drops or a node does not answer,
  trying each once per round and backing off between rounds; the per-channel cursors make
  catching up through another node no different from catching up through the same one;
* the *dispatcher* hands messages to callbacks and the inbox in order.

A terminal refusal is raised from ``async for`` (after the messages delivered before it) and from
every later call.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence

from .errors import (AgentClientError, AgentDisabled, ClientClosed, ConnectionLost, ConnectionRefused, NotConnected,
                     NotLoggedIn, RateLimited, SessionEnded, TokenRejected, Unavailable)
from .inbox import Inbox
from .link import CALL_TIMEOUT, Link
from .messages import Agent, Message
from .nodes import Nodes
from .ordering import ChannelCursor
from .http_api import TokenSession, make_ssl_context

log = logging.getLogger(__name__)

MessageCallback = Callable[[Message], Awaitable[None] | None]

#: ``session_ended`` reasons after which reconnecting cannot help.
TERMINAL_REASONS = frozenset({"logged_out", "revoked", "agent_disabled"})
#: Connect refusals that a refreshed token can fix.
TOKEN_RETRY_CODES = frozenset({"token_expired", "token_invalid"})
HISTORY_PAGE = 500
#: Own sends and gaps within this window share one catch-up request (HQ limits events per second).
CATCH_UP_DELAY = 0.1
#: Pause before asking again when HQ answered a catch-up with ``unavailable`` (a backend is down).
CATCH_UP_RETRY = 1.0


def session_error(reason: str) -> AgentClientError:
    """The exception for a ``session_ended`` reason (a disabled agent gets :class:`AgentDisabled`)."""
    if reason == "agent_disabled":
        return AgentDisabled("the agent was disabled; HQ ended the session")
    return SessionEnded(reason)


@dataclass
class ClientStats:
    """Counters for monitoring and tests (never tokens)."""

    connects: int = 0
    disconnects: int = 0
    reauths: int = 0
    expiry_warnings: int = 0
    #: Re-authentications prompted by HQ's ``token_expiring`` rather than the client's own timer.
    reauths_on_warning: int = 0
    #: Times the client moved to another HQ node because the one in use stopped answering.
    failovers: int = 0
    catch_up_requests: int = 0
    delivered: int = 0
    #: Messages released by a history catch-up (missed live, or held behind a gap).
    recovered: int = 0
    duplicates_dropped: int = 0
    #: ``time.monotonic()`` when a terminal refusal stopped the client.
    stopped_at: float | None = None


class AgentClient:
    """A field agent's client for HQ. Use as ``async with AgentClient(url) as client: ...``."""

    def __init__(self, url: str | Sequence[str], *, ca_file: str | None = None, verify: bool = True,
                 transports: list[str] | None = None, inbox: bool = True,
                 backoff_initial: float = 0.25, backoff_max: float = 5.0,
                 call_timeout: float = CALL_TIMEOUT) -> None:
        """``url`` is HQ's base URL (``https://hq.example``), or several nodes of one HQ cluster (a
        list, or one comma-separated string), tried in turn when the one in use stops answering.
        ``ca_file`` adds a trusted CA bundle; ``verify=False`` skips certificate checks (tests
        only). ``transports`` defaults to WebSocket. ``inbox=False`` skips filling the
        ``async for`` queue when only callbacks are used."""
        self._nodes = Nodes(url, self._on_failover)
        self._verify = verify
        self._tokens = TokenSession(self._nodes, make_ssl_context(ca_file, verify))
        self._transports = transports or ["websocket"]
        self._use_inbox = inbox
        self._backoff = (backoff_initial, backoff_max)
        self._call_timeout = call_timeout
        self._inbox = Inbox()
        self._outbox: asyncio.Queue[Message | None] = asyncio.Queue()
        self._callbacks: list[MessageCallback] = []
        self._channels: list[str] = []
        self._cursors: dict[str, ChannelCursor] = {}
        self._catch_up_locks: dict[str, asyncio.Lock] = {}
        self._catch_up_tasks: dict[str, asyncio.Task[None]] = {}
        self._link: Link | None = None
        self._ready = asyncio.Event()
        self._renew_now = asyncio.Event()
        self._warned = False  # HQ sent token_expiring for the socket's token
        self._expired_reauths = 0
        self._renew_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._dispatcher: asyncio.Task[None] | None = None
        self._error: AgentClientError | None = None
        self._closed = False
        self.stats = ClientStats()

    # public API ----------------------------------------------------------------------------------
    @property
    def urls(self) -> tuple[str, ...]:
        """The HQ node URLs this client may use, in the order given."""
        return self._nodes.urls

    @property
    def url(self) -> str:
        """The HQ node in use (the socket's, or the one the next connection attempt goes to)."""
        return self._link.url if self._link is not None and self._link.connected else self._nodes.current

    @property
    def agent(self) -> Agent | None:
        """The logged-in agent (stored codename and role), or ``None``."""
        return self._tokens.agent if self._tokens.logged_in else None

    @property
    def access_token(self) -> str:
        """The current access token, for calling other HQ APIs. Never log it."""
        return self._tokens.access_token

    @property
    def refresh_token(self) -> str:
        """The current refresh token. Treat as a password: HQ revokes the session if it is reused."""
        return self._tokens.refresh_token

    @property
    def connected(self) -> bool:
        """Whether the socket is up and its channels are joined."""
        return self._ready.is_set() and self._error is None and not self._closed

    @property
    def refreshes(self) -> int:
        """How many times the access token has been refreshed."""
        return self._tokens.refreshes

    @property
    def error(self) -> AgentClientError | None:
        """The terminal refusal that stopped the client, if any."""
        return self._error

    async def login(self, codename: str, password: str, otp: str | None = None) -> Agent:
        """Log in, with ``otp`` (a code from the agent's authenticator app, or a recovery code) for
        an agent with a second factor; raises :class:`LoginFailed`, :class:`MfaRequired`,
        :class:`InvalidOtp`, :class:`MfaEnrollmentRequired`, :class:`AgentDisabled`,
        :class:`TooManyAttempts`, ... The code is needed at login only: refreshes never ask again."""
        self._check_usable()
        return await self._tokens.login(codename, password, otp)

    async def connect(self, channels: Iterable[str] = (), *, after_ids: Mapping[str, int] | None = None) -> None:
        """Connect and join ``channels``; from then on every new message is delivered.

        ``after_ids`` replays a channel from a known point (``{"missions": 0}`` for all of it).
        Raises :class:`ConnectionRefused`, :class:`Forbidden`, :class:`NotFound`, :class:`Unavailable` ...
        """
        self._check_usable()
        if not self._tokens.logged_in:
            raise NotLoggedIn("log in before connecting")
        if self._link is not None:
            raise AgentClientError("already connected", "already_connected")
        self._channels = list(dict.fromkeys(channels))
        after_ids = after_ids or {}
        self._cursors = {c: ChannelCursor(c, after_ids.get(c)) for c in self._channels}
        self._catch_up_locks = {c: asyncio.Lock() for c in self._channels}
        await self._tokens.ensure_fresh()
        try:
            await self._open_first_link()
        except BaseException:
            self._link = None
            raise
        self._dispatcher = asyncio.create_task(self._dispatch(), name="agent_client-dispatch")
        self._tasks = [asyncio.create_task(self._supervise(), name="agent_client-supervise"),
                       asyncio.create_task(self._renew_loop(), name="agent_client-renew")]

    def on_message(self, callback: MessageCallback) -> MessageCallback:
        """Call ``callback(message)`` (plain or ``async``) for each message, in order; usable as a decorator."""
        self._callbacks.append(callback)
        return callback

    async def send(self, channel: str, text: str, *, timeout: float | None = None) -> int:
        """Send ``text`` to ``channel``; returns the stored id once HQ has stored it durably.

        Waits for a reconnect in progress. Raises :class:`Forbidden`, :class:`NotFound`,
        :class:`PayloadTooLarge`, :class:`RateLimited`, :class:`BadRequest`, or
        :class:`ConnectionLost` when the socket dropped before HQ answered (the message may or may
        not be stored; if it was, it appears in the channel's stream).
        """
        answer = await self._call("message", {"channel": channel, "text": text}, timeout)
        message_id = answer.get("id")
        if type(message_id) is not int:
            raise AgentClientError("HQ did not return the message id", "internal")
        cursor = self._cursors.get(channel)
        if cursor is not None:
            # HQ does not echo a send to its own socket: fetch it to keep the stream whole.
            cursor.note_stored(message_id)
            if cursor.has_gap:
                self._schedule_catch_up(channel)
        return message_id

    async def history(self, channel: str, after_id: int | None = None, limit: int | None = None,
                      *, timeout: float | None = None) -> list[Message]:
        """One page of ``channel``'s history, oldest first: after ``after_id``, or the latest."""
        payload: dict[str, Any] = {"channel": channel}
        if after_id is not None:
            payload["after_id"] = after_id
        if limit is not None:
            payload["limit"] = limit
        answer = await self._call("history", payload, timeout)
        messages = [Message.from_wire(m) for m in answer.get("messages") or []]
        return [m for m in messages if m is not None]

    async def logout(self) -> None:
        """End the session at HQ (its sockets end too) and close the client."""
        if self._closed:
            return
        self._closed = True  # our own ``session_ended: logged_out`` is not an error
        try:
            if self._error is None and self._tokens.logged_in:
                await self._tokens.logout()
        finally:
            await self.close()

    async def close(self) -> None:
        """Disconnect and release everything; ``async for`` ends after delivered messages."""
        self._closed = True
        self._ready.set()  # wake callers waiting for a reconnect: they see the client is closed
        await self._stop_tasks()
        if self._link is not None:
            await self._link.close()
        if self._dispatcher is not None:
            self._outbox.put_nowait(None)
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._dispatcher, 2)
        self._inbox.end(self._error)
        await self._tokens.close()

    async def __aenter__(self) -> "AgentClient":
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        if not self._use_inbox:
            raise AgentClientError("this client was created with inbox=False", "no_inbox")
        return await self._inbox.get()

    # calls ---------------------------------------------------------------------------------------
    def _check_usable(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise ClientClosed("the client is closed")

    async def _call(self, event: str, payload: Any, timeout: float | None) -> dict[str, Any]:
        timeout = self._call_timeout if timeout is None else timeout
        self._check_usable()
        if self._link is None:
            raise NotConnected("call connect() first")
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except asyncio.TimeoutError:
            raise Unavailable(f"not reconnected to HQ within {timeout:g} s") from None
        self._check_usable()
        assert self._link is not None
        return await self._link.call(event, payload, timeout)

    # connecting ----------------------------------------------------------------------------------
    async def _open_first_link(self) -> None:
        """The first connection: each node once, in turn, until one accepts; raise the last failure."""
        for attempt in range(len(self._nodes)):
            try:
                await self._open_link()
                return
            except AgentClientError as exc:
                if not self._node_failed(exc, self._link) or attempt == len(self._nodes) - 1:
                    raise

    def _node_failed(self, error: AgentClientError, link: Link | None) -> bool:
        """Whether ``error``, raised while opening ``link``, means its node is not serving; if so,
        prefer the next node."""
        if link is None or error.terminal or isinstance(error, RateLimited):
            return False  # a refusal (or a rate limit) another node of the same HQ would repeat
        self._nodes.failed(link.url)
        return True

    def _on_failover(self, left: str, now: str) -> None:
        self.stats.failovers += 1
        log.info("HQ node %s is not answering; moving to %s", left, now)

    async def _open_link(self) -> None:
        """One connection attempt to the preferred node: connect, join every channel, catch up.
        Raises on any failure."""
        link = Link(self._nodes.current, self._tokens.http, self._verify, self._transports,
                    self._on_live_message, self._on_token_expiring)
        self._link = link
        await link.open(lambda: self._tokens.access_token)
        try:
            for channel in self._channels:
                answer = await link.call("join", {"channel": channel}, self._call_timeout)
                last_id = answer.get("last_id")
                self._release(self._cursors[channel].start(last_id if type(last_id) is int else 0))
            for channel in self._channels:
                await self._catch_up(channel, link)
        except BaseException:
            await link.close()
            raise
        self._nodes.answered(link.url)
        self.stats.connects += 1
        self._ready.set()
        if link.token != self._tokens.access_token:
            self._renew_now.set()  # refreshed while connecting: hand the socket the newer token
        for channel, cursor in self._cursors.items():
            if cursor.has_gap:  # a live message overtook another during the catch-up
                self._schedule_catch_up(channel)

    async def _supervise(self) -> None:
        """Wait for each socket to end; reconnect or stop."""
        while True:
            link = self._link
            assert link is not None
            await link.ended.wait()
            self._ready.clear()
            if self._closed or self._error is not None:
                return
            self.stats.disconnects += 1
            reason = link.end_reason
            log.info("connection to HQ ended (%s)", reason or "dropped")
            if reason in TERMINAL_REASONS:
                # A refresh in flight may fail with the more specific cause (token_reused): let it win.
                await self._tokens.settled()
                await self._fail(session_error(reason or "unknown"))
                return
            if reason is None:
                # Dropped without a word from HQ: the node may be gone, so start with the next one.
                # (An expired token is HQ speaking; that node is fine.)
                self._nodes.failed(link.url)
            if not await self._reconnect(refresh_first=reason == "token_expired"):
                return

    async def _reconnect(self, refresh_first: bool) -> bool:
        """Reconnect, each node once per round, with exponential backoff and jitter between rounds;
        False when the client stopped instead."""
        delay, ceiling = self._backoff
        tried = 0  # nodes that failed in this round
        # The token to replace before connecting (HQ said it expired), and the last one a forced
        # refresh produced: if HQ refuses that one too, refreshing again cannot help.
        stale = self._link.token if refresh_first and self._link else None
        forced: str | None = None
        while not self._closed:
            before = self._link  # a failure before a new Link exists is HTTP's, which fails over itself
            try:
                if stale is not None:
                    await self._tokens.refresh(stale=stale)
                    forced, stale = self._tokens.access_token, None
                else:
                    await self._tokens.ensure_fresh()
                await self._open_link()
                return True
            except ConnectionRefused as exc:
                refused = self._link.token if self._link else None
                if exc.code not in TOKEN_RETRY_CODES or refused is None or refused == forced:
                    await self._fail(exc)
                    return False
                log.info("HQ refused the token (%s); refreshing it", exc.code)
                stale = refused
                continue
            except AgentClientError as exc:
                if exc.terminal:
                    await self._fail(exc)
                    return False
                tried += 1
                link = self._link if self._link is not before else None
                if self._node_failed(exc, link) and tried < len(self._nodes):
                    log.info("reconnect failed (%s); trying %s", exc.code, self._nodes.current)
                    continue  # another node may be up: no reason to wait
                log.info("reconnect failed (%s); retrying in %.1f s", exc.code, delay)
            tried = 0
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, ceiling)
        return False

    # token renewal -------------------------------------------------------------------------------
    def _on_token_expiring(self, data: Any = None) -> None:
        self.stats.expiry_warnings += 1
        self._warned = True
        self._renew_now.set()

    async def _renew_loop(self) -> None:
        """Refresh before expiry (or when HQ warns) and hand the new token to the socket."""
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._renew_now.wait(), max(0.0, self._tokens.refresh_due_in()))
            warned, self._warned = self._warned, False
            self._renew_now.clear()
            try:
                await self._renew(warned)
            except AgentClientError as exc:
                if exc.terminal:
                    await self._fail(exc)
                    return
                log.info("token renewal failed (%s); retrying", exc.code)
                await asyncio.sleep(1.0)

    async def _renew(self, warned: bool) -> None:
        async with self._renew_lock:
            link = self._link
            if warned and link is not None and link.token == self._tokens.access_token:
                # HQ says the socket's token is about to expire: a new token is needed now.
                await self._tokens.refresh(stale=link.token)
            else:
                await self._tokens.ensure_fresh()
            link = self._link
            token = self._tokens.access_token
            if link is None or not link.connected or not self._ready.is_set() or link.token == token:
                return
            try:
                await link.call("reauth", {"token": token}, self._call_timeout)
            except TokenRejected as exc:
                # Expired in flight: refresh and try again, a couple of times at most.
                self._expired_reauths += exc.code == "token_expired"
                if exc.code == "token_expired" and self._expired_reauths <= 2:
                    await self._tokens.refresh(stale=token)
                    self._renew_now.set()
                    return
                if exc.code == "token_revoked":
                    raise SessionEnded("revoked", "HQ refused the renewed token: session revoked") from None
                raise
            except RateLimited:
                self._renew_now.set()  # try again after the renew loop's pause
                raise
            link.token = token
            self._expired_reauths = 0
            self.stats.reauths += 1
            self.stats.reauths_on_warning += warned

    # delivery ------------------------------------------------------------------------------------
    def _on_live_message(self, message: Message) -> None:
        cursor = self._cursors.get(message.channel)
        if cursor is None:
            return
        self._offer(cursor, message)
        if cursor.has_gap:
            self._schedule_catch_up(message.channel)

    def _offer(self, cursor: ChannelCursor, message: Message) -> int:
        before = cursor.duplicates
        released = cursor.offer(message)
        self._release(released)
        self.stats.duplicates_dropped += cursor.duplicates - before
        return len(released)

    def _release(self, messages: list[Message]) -> None:
        for message in messages:
            self._outbox.put_nowait(message)

    def _schedule_catch_up(self, channel: str) -> None:
        task = self._catch_up_tasks.get(channel)
        if task is None or task.done():
            self._catch_up_tasks[channel] = asyncio.create_task(self._catch_up_later(channel))

    async def _catch_up_later(self, channel: str) -> None:
        await asyncio.sleep(CATCH_UP_DELAY)
        await self._ready.wait()  # during a reconnect, wait for it (it catches up too; a second look is cheap)
        link = self._link
        if link is None or self._closed or self._error is not None:
            return
        while True:
            try:
                await self._catch_up(channel, link)
                return
            except ConnectionLost:
                return  # the reconnect catches up
            except Unavailable:
                # HQ is up but a backend it needs is not: nobody else will ask again for this gap.
                if not link.connected or self._closed or self._error is not None:
                    return
                await asyncio.sleep(CATCH_UP_RETRY)
            except AgentClientError as exc:
                if exc.terminal:
                    await self._fail(exc)
                return

    async def _catch_up(self, channel: str, link: Link) -> None:
        """Fetch ``history(after_id=last delivered)`` page by page until nothing is missing."""
        cursor = self._cursors[channel]
        async with self._catch_up_locks[channel]:
            while cursor.started:
                try:
                    self.stats.catch_up_requests += 1
                    answer = await link.call("history", {"channel": channel, "after_id": cursor.last_id,
                                                         "limit": HISTORY_PAGE}, self._call_timeout)
                except RateLimited:
                    await asyncio.sleep(0.5)
                    continue
                page = [m for m in map(Message.from_wire, answer.get("messages") or []) if m is not None]
                for message in page:
                    self.stats.recovered += self._offer(cursor, message)
                if not page:
                    break

    async def _dispatch(self) -> None:
        """Hand each message to the inbox and the callbacks, one at a time, in order."""
        while True:
            message = await self._outbox.get()
            if message is None:
                return
            self.stats.delivered += 1
            if self._use_inbox:
                self._inbox.put(message)
            for callback in list(self._callbacks):
                try:
                    result = callback(message)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("message callback failed")

    # stopping ------------------------------------------------------------------------------------
    async def _fail(self, error: AgentClientError) -> None:
        """Stop on a terminal refusal: remember it, drop the socket, end the inbox after what is queued."""
        if self._error is not None or self._closed:
            return
        log.warning("agent client stopped: %s", error.code)
        self._error = error
        self.stats.stopped_at = time.monotonic()
        self._ready.set()
        if self._link is not None:
            await self._link.close()
        self._outbox.put_nowait(None)
        if self._dispatcher is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._dispatcher), 2)
        self._inbox.end(error)
        await self._stop_tasks()

    async def _stop_tasks(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in [*self._tasks, *self._catch_up_tasks.values()] if t is not current and not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
