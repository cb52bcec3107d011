"""The shared store for several HQ nodes: PostgreSQL through asyncpg.

The same tables, shared statements and refresh-token rule as the SQLite store (hq/store/schema.py,
queries.py, rules.py). Per-channel message ids come from a ``channels`` row bumped once per
batch of messages (group commit, :data:`_INSERT_BATCH`), so concurrent writers on different nodes
never hand out the same id and never leave a gap.

The database may go away (a restart, a failover, a network cut) while HQ runs. Every operation
then fails within :data:`OPERATION_TIMEOUT` with :class:`~hq.store.base.StoreUnavailable` — never a
driver exception, never a wait on a dead socket — and the pool makes fresh connections by itself
once the database answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import Any, AsyncIterator, Callable, Concatenate, Coroutine, NamedTuple, ParamSpec, Sequence, TypeVar

import asyncpg
import asyncpg.exceptions as pg_errors

from . import rows
from .base import AgentExistsError, ServiceKeyExistsError, StoreUnavailable, UnknownAgentError
from .batching import GroupCommit
from .dialect import POSTGRESQL
from .models import Agent, LoginSession, Message, MfaRecord, RefreshResult, Revocation, ServiceKey
from .pruning import PruneReport, Retention, prune_in_transaction
from .queries import Queries
from .rotation import rotate_in_transaction
from .rules import RotationRequest
from .schema import schema

log = logging.getLogger(__name__)
_SQL = Queries(POSTGRESQL)
P = ParamSpec("P")
T = TypeVar("T")

#: Seconds one operation may take in all (a pooled connection, a new connection if needed, every
#: statement and the commit) before it is answered as unavailable: a client never waits longer.
OPERATION_TIMEOUT = 3.0
#: Seconds to open one connection: a host that drops packets would otherwise hold a connect for
#: minutes of TCP retries. Shorter than the operation's budget, so the error says what happened.
CONNECT_TIMEOUT = 2.0
#: Seconds a connection may take to be reset for reuse after a successful operation; past that it
#: is closed (the result stands, the pool opens another).
RELEASE_TIMEOUT = 1.0
#: Seconds closing the pool may wait for connections to finish before they are cut.
CLOSE_TIMEOUT = 5.0
#: The most messages one group commit stores: one statement's arrays, a few hundred kilobytes at most
#: (texts are at most 16 KiB), committed in a few milliseconds.
MESSAGES_PER_BATCH = 256

#: One batch of messages in one statement (in one transaction, see _insert_batch). The channels'
#: counters are bumped once per channel by the batch's count of its messages, and the messages
#: are numbered from the previous value in the order they were submitted. Another node's batch on
#: the same channel waits for that row lock and then reads the committed counter, so a channel's ids
#: commit in order and with no gap; a batch that fails rolls its counter back with it. Counters are
#: locked in name order, so two batches over the same channels cannot deadlock.
_INSERT_BATCH = """
WITH batch AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
        WITH ORDINALITY AS b(channel, sender, text, ts, ordinal)
), counts AS (
    SELECT channel, count(*) AS n FROM batch GROUP BY channel
), counters AS (
    INSERT INTO channels AS c (name, last_id) SELECT channel, n FROM counts ORDER BY channel
    ON CONFLICT (name) DO UPDATE SET last_id = c.last_id + excluded.last_id
    RETURNING c.name, c.last_id
), numbered AS (
    SELECT b.ordinal, b.channel, b.sender, b.text, b.ts,
           counters.last_id - counts.n + row_number() OVER (PARTITION BY b.channel ORDER BY b.ordinal) AS id
    FROM batch b JOIN counts ON counts.channel = b.channel JOIN counters ON counters.name = b.channel
), stored AS (
    INSERT INTO messages (channel, id, sender, text, ts) SELECT channel, id, sender, text, ts FROM numbered
)
SELECT ordinal, id FROM numbered ORDER BY ordinal
"""


#: Advisory locks: creating the schema (nodes starting together), and a pruning run (hq/store/pruning.py).
SCHEMA_LOCK, PRUNE_LOCK = 4242, 4243


async def _changes(conn: asyncpg.Connection, sql: str, args: tuple[object, ...]) -> int:
    """Run one statement; how many rows it changed (the count ending its status, "DELETE 3")."""
    status = await conn.execute(sql, *args)
    return int(status.rsplit(" ", 1)[-1])


class _PendingMessage(NamedTuple):
    """A message waiting for its batch."""

    channel: str
    sender: str
    text: str
    ts: str

#: What a database that is down, restarting, out of connections or unreachable raises. The
#: InterfaceErrors that mean "HQ passed something wrong" are not among them (see _is_outage).
_FAILURES: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable; TimeoutError too
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08: the connection does not exist or broke
    pg_errors.OperatorInterventionError,  # class 57: shutting down, starting up, cancelled
    pg_errors.TooManyConnectionsError,
    asyncpg.InterfaceError,  # "connection is closed", "pool is closing", a cancelled operation
)
_PROGRAMMING_ERRORS = (pg_errors.DataError, pg_errors.ClientConfigurationError,
                       pg_errors.UnsupportedClientFeatureError, pg_errors.UnsupportedServerFeatureError)


def _is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the database is unreachable rather than that HQ asked something wrong."""
    return isinstance(exc, _FAILURES) and not isinstance(exc, _PROGRAMMING_ERRORS)


def _describe(exc: BaseException) -> str:
    """A driver failure for the operator's log: its type and first line (never a password)."""
    detail = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {detail[0]}" if detail else type(exc).__name__


def _bounded(method: Callable[Concatenate[PostgresStore, P], Coroutine[Any, Any, T]]
             ) -> Callable[Concatenate[PostgresStore, P], Coroutine[Any, Any, T]]:
    """Make a store operation end within the store's timeout (see :meth:`PostgresStore._within_deadline`)."""
    @functools.wraps(method)
    async def bounded(self: PostgresStore, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._within_deadline(method(self, *args, **kwargs))
    return bounded


class PostgresStore:
    """The :class:`~hq.store.base.Store` on a PostgreSQL database."""

    def __init__(self, url: str, timeout: float = OPERATION_TIMEOUT, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self._url = url
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._pool: asyncpg.Pool | None = None
        self._down = False  # an outage is logged once when it starts and once when it ends
        self._abandoned: set[asyncio.Task[Any]] = set()  # operations cut off, still winding down
        # The Task of each operation holding a connection -> since when (loop time).
        self._acquired: dict[asyncio.Task[Any] | None, float] = {}
        self._progress = 0.0  # loop time at which an operation last succeeded
        # An outage fails the batch in flight and what queued behind it at once: those callers would
        # otherwise each wait out a deadline of their own against the same dead database.
        self._messages: GroupCommit[_PendingMessage, Message] = GroupCommit(
            self._commit_messages, MESSAGES_PER_BATCH, name="postgres-group-commit",
            fails_queue=lambda error: isinstance(error, StoreUnavailable))

    @property
    def pool(self) -> asyncpg.Pool:
        """The connection pool (the store is open)."""
        assert self._pool is not None, "store is not open"
        return self._pool

    @property
    def queued_messages(self) -> int:
        """Messages waiting for the next group commit (not counting the batch being committed)."""
        return self._messages.pending

    async def open(self) -> None:
        """Connect and create the schema if needed (serialised by an advisory lock)."""
        try:
            # min_size=0: connections are made when needed, not by asyncpg's background task that
            # logs a traceback for each retry while the database is down.
            self._pool = await asyncpg.create_pool(self._url, min_size=0, max_size=10,
                                                   timeout=self._connect_timeout)
        except Exception as exc:
            if _is_outage(exc):
                raise StoreUnavailable(f"cannot reach the database ({_describe(exc)})") from exc
            raise
        # Not bounded by the store's timeout: nodes starting together wait here for each other.
        async with self._connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
            await conn.execute(schema(POSTGRESQL))

    async def close(self) -> None:
        """Finish the messages queued, then close every connection (cut them if the database does not answer)."""
        await self._messages.close()
        for task in self._abandoned:
            task.cancel()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            with contextlib.suppress(Exception):
                # On any error, timeout included, asyncpg's close() terminates the pool.
                await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)

    @_bounded
    async def ping(self) -> None:
        """Raise :class:`StoreUnavailable` if the database cannot answer."""
        async with self._connection() as conn:
            await conn.fetchval("SELECT 1")

    # staying responsive -------------------------------------------------------------------------
    async def _within_deadline(self, operation: Coroutine[Any, Any, T]) -> T:
        """Await ``operation`` until its deadline; past it, :class:`StoreUnavailable` at once.

        Once the operation holds a connection, its statements and commit get the store's timeout.
        Before that it waits for a pooled connection behind other operations (or for a new one,
        which has a shorter timeout of its own), and that is no outage while they finish: a burst
        of writes queues, it is not refused. That wait ends one timeout after the last operation
        that succeeded, so when the database stops answering, everything queued is answered within
        about one timeout too, not wave after wave. (The worst case, a connection got just before
        the database froze, is two timeouts.)

        The operation runs in a Task of its own, watched through ``asyncio.wait``: the deadline
        cancels that Task and nothing else, and the caller does not wait for it to wind down. (The
        deadline of ``asyncio.timeout`` would cancel whichever task ``current_task()`` named when it
        was set — and HQ starts event handlers by hand, inside the socket's reading task, before
        they have a Task of their own: see ``run_eagerly`` in hq/realtime/socket_server.py.) What the
        caller first waits on is ``asyncio.wait``'s own future, which never fails.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        task = asyncio.ensure_future(operation)
        try:
            while not task.done():
                acquired = self._acquired.get(task)
                deadline = (acquired if acquired is not None else max(started, self._progress)) + self._timeout
                if deadline <= loop.time():
                    task.cancel()
                    self._abandoned.add(task)
                    task.add_done_callback(self._forget)
                    raise self._unavailable(TimeoutError(f"no answer within {self._timeout:g} s"))
                await asyncio.wait((task,), timeout=deadline - loop.time())
        except asyncio.CancelledError:
            task.cancel()
            raise
        return task.result()

    def _forget(self, task: asyncio.Task[Any]) -> None:
        """An operation cut off by its deadline has ended; its outcome was already answered."""
        self._abandoned.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it as never retrieved

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection for one operation; connection-level failures become :class:`StoreUnavailable`.

        A connection that failed, or was interrupted mid-statement by the deadline, is closed
        rather than reset: a polite reset on a dead or frozen server could wait as long as the
        failure itself.
        """
        try:
            conn = await self.pool.acquire()
        except Exception as exc:
            if _is_outage(exc):
                raise self._unavailable(exc) from exc
            raise
        task = asyncio.current_task()
        self._acquired[task] = asyncio.get_running_loop().time()
        try:
            yield conn
        except (Exception, asyncio.CancelledError) as exc:
            if _is_outage(exc) or isinstance(exc, asyncio.CancelledError):
                # asyncpg has already given a connection that broke back to the pool; one still
                # held may be stuck mid-statement.
                with contextlib.suppress(asyncpg.InterfaceError):
                    conn.terminate()
            await self._release(conn)
            if _is_outage(exc):
                raise self._unavailable(exc) from exc
            raise
        finally:
            self._acquired.pop(task, None)
        await self._release(conn)
        self._progress = asyncio.get_running_loop().time()
        if self._down:
            self._down = False
            log.info("the database answers again")

    async def _release(self, conn: asyncpg.Connection) -> None:
        """Give ``conn`` back to the pool; one that cannot be reset in time is closed instead."""
        with contextlib.suppress(Exception):
            await self.pool.release(conn, timeout=RELEASE_TIMEOUT)

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        """The error callers see for ``exc``; the first of an outage is logged for the operator."""
        if not self._down:
            self._down = True
            log.warning("the database is unavailable (%s); answering 'unavailable' until it is back",
                        _describe(exc))
        return StoreUnavailable("the database is unavailable; retry later")

    # one statement, one pooled connection ------------------------------------------------------
    async def _execute(self, query: str, *args: object) -> str:
        async with self._connection() as conn:
            return await conn.execute(query, *args)

    async def _fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        async with self._connection() as conn:
            return await conn.fetch(query, *args)

    async def _fetchrow(self, query: str, *args: object) -> asyncpg.Record | None:
        async with self._connection() as conn:
            return await conn.fetchrow(query, *args)

    async def _fetchval(self, query: str, *args: object) -> Any:
        async with self._connection() as conn:
            return await conn.fetchval(query, *args)

    # agents -------------------------------------------------------------------------------------
    @_bounded
    async def add_agent(self, codename: str, role: str, password_hash: str) -> Agent:
        """Create an agent; raises :class:`AgentExistsError` for a taken codename (any case)."""
        created = rows.now_iso()
        try:
            await self._execute(_SQL.insert_agent, codename, codename.lower(), role, password_hash, created)
        except asyncpg.UniqueViolationError:
            raise AgentExistsError(codename) from None
        return Agent(codename, role, True, created, password_hash)

    @_bounded
    async def get_agent(self, codename: str) -> Agent | None:
        """The agent with that codename, compared regardless of case."""
        return rows.agent(await self._fetchrow(_SQL.agent, codename.lower()))

    @_bounded
    async def list_agents(self) -> list[Agent]:
        """Every agent, oldest first."""
        return [a for a in map(rows.agent, await self._fetch(_SQL.agents)) if a is not None]

    @_bounded
    async def count_agents(self) -> int:
        """How many agents exist."""
        return int(await self._fetchval(_SQL.count_agents))

    @_bounded
    async def set_password(self, codename: str, password_hash: str) -> Agent:
        """Replace an agent's password hash."""
        return await self._update_agent(codename, _SQL.set_password, password_hash)

    @_bounded
    async def set_enabled(self, codename: str, enabled: bool) -> Agent:
        """Enable or disable an agent."""
        return await self._update_agent(codename, _SQL.set_enabled, enabled)

    @_bounded
    async def set_role(self, codename: str, role: str) -> Agent:
        """Change an agent's clearance level."""
        return await self._update_agent(codename, _SQL.set_role, role)

    async def _update_agent(self, codename: str, update: str, value: object) -> Agent:
        agent = rows.agent(await self._fetchrow(update, value, codename.lower()))
        if agent is None:
            raise UnknownAgentError(codename)
        return agent

    # sessions and revocation -----------------------------------------------------------------------
    @_bounded
    async def create_session(self, session_id: str, codename: str) -> None:
        """Record a new login session."""
        await self._execute(_SQL.insert_session, session_id, codename.lower(), rows.now_iso())

    @_bounded
    async def get_session(self, session_id: str) -> LoginSession | None:
        """A login session by id."""
        return rows.session(await self._fetchrow(_SQL.session, session_id))

    @_bounded
    async def get_agent_and_session(self, codename: str, session_id: str) -> tuple[Agent | None, LoginSession | None]:
        """An agent and one login session in one query (the connect path asks for both)."""
        row = await self._fetchrow(_SQL.agent_and_session, session_id, codename.lower())
        return rows.agent(row), rows.joined_session(row)

    @_bounded
    async def revoke_sessions(self, codename: str, reason: str, session_id: str | None = None) -> list[str]:
        """Revoke one session (``session_id``) or all of an agent's, and append to the revocation feed."""
        revoke, record = _SQL.revocation(codename, reason, session_id)
        async with self._connection() as conn, conn.transaction():
            revoked = await conn.fetch(revoke.sql, *revoke.args)
            await conn.execute(record.sql, *record.args)
        return [r["sid"] for r in revoked]

    @_bounded
    async def revocations_after(self, cursor: int) -> list[Revocation]:
        """Feed entries newer than ``cursor``, oldest first."""
        return [rows.revocation(r) for r in await self._fetch(_SQL.revocations_after, cursor)]

    @_bounded
    async def last_revocation_id(self) -> int:
        """The newest feed entry's id (0 when empty)."""
        return int(await self._fetchval(_SQL.last_revocation_id))

    # the directors' API ---------------------------------------------------------------------------
    @_bounded
    async def last_logins(self) -> dict[str, str]:
        """Lower-case codename -> ``created`` of its newest login session, for every agent that has one."""
        return {r["codename_key"]: r["last"] for r in await self._fetch(_SQL.last_logins)}

    @_bounded
    async def live_sessions(self, now: float) -> list[LoginSession]:
        """Unrevoked login sessions holding a refresh token that is neither spent nor expired at ``now``."""
        return [s for s in map(rows.session, await self._fetch(_SQL.live_sessions, now)) if s is not None]

    @_bounded
    async def codenames_with_mfa(self) -> set[str]:
        """Lower-case codenames of every agent with a confirmed second factor."""
        return {r["codename_key"] for r in await self._fetch(_SQL.codenames_with_mfa)}

    # refresh tokens ---------------------------------------------------------------------------------
    @_bounded
    async def add_refresh_token(self, token_hash: str, session_id: str, expires_at: float) -> None:
        """Store a new refresh token's hash."""
        await self._execute(_SQL.insert_refresh_token, token_hash, session_id, expires_at)

    # service keys --------------------------------------------------------------------------------
    @_bounded
    async def add_service_key(self, key_id: str, name: str, role: str, key_hash: str) -> ServiceKey:
        """Store a new key by its hash; :class:`ServiceKeyExistsError` for a live key's name (any case)."""
        created = rows.now_iso()
        try:
            await self._execute(_SQL.insert_service_key, key_id, name, name.lower(), role, key_hash, created)
        except asyncpg.UniqueViolationError:
            raise ServiceKeyExistsError(name) from None
        return ServiceKey(key_id, name, role, created, None, None)

    @_bounded
    async def list_service_keys(self) -> list[ServiceKey]:
        """Every key not revoked, oldest first."""
        return [k for k in map(rows.service_key, await self._fetch(_SQL.service_keys)) if k is not None]

    @_bounded
    async def service_key_by_hash(self, key_hash: str) -> ServiceKey | None:
        """The key (revoked or not) stored under ``key_hash``."""
        return rows.service_key(await self._fetchrow(_SQL.service_key_by_hash, key_hash))

    @_bounded
    async def revoke_service_key(self, name: str) -> ServiceKey | None:
        """Revoke the live key named ``name`` and append it to the revocation feed, in one transaction."""
        revoke = _SQL.service_key_revocation(name, rows.now_iso())
        async with self._connection() as conn, conn.transaction():
            key = rows.service_key(await conn.fetchrow(revoke.sql, *revoke.args))
            if key is not None:
                record = _SQL.service_key_feed_entry(key.name, key.key_id)
                await conn.execute(record.sql, *record.args)
        return key

    @_bounded
    async def touch_service_keys(self, last_used: dict[str, str]) -> None:
        """Record when keys were last used, in one statement per key and one transaction."""
        async with self._connection() as conn, conn.transaction():
            await conn.executemany(_SQL.touch_service_key, [(at, key_id) for key_id, at in last_used.items()])

    @_bounded
    async def rotate_refresh_token(self, old_hash: str, new_hash: str, new_expires_at: float,
                                   now: float, grace: float = 0.0) -> RefreshResult:
        """Spend ``old_hash`` and store ``new_hash`` atomically; a second use revokes the session.

        A retry within ``grace`` seconds is the exception: see :meth:`hq.store.base.Store.rotate_refresh_token`.
        Both reads lock their rows (``FOR UPDATE``): the token's lock serialises every use of it,
        rotation and retries alike; the child's makes a concurrent rotation of the child finish
        first, so a retry sees whether the child was spent (under READ COMMITTED a locking read
        waits for the other transaction and returns the row as it committed it).
        """
        request = RotationRequest(old_hash, new_hash, new_expires_at, now, grace)
        async with self._connection() as conn, conn.transaction():
            return await rotate_in_transaction(_SQL, lambda sql, args: conn.fetchrow(sql, *args), request)

    @_bounded
    async def prune(self, retention: Retention, now: float) -> PruneReport | None:
        """Delete what nothing needs any more (hq/store/pruning.py), if this node wins the round.

        ``pg_try_advisory_xact_lock`` elects the pruner: a node that finds another pruning skips the
        round instead of waiting, and the lock ends with the transaction.
        """
        async with self._connection() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", PRUNE_LOCK):
                return None
            return await prune_in_transaction(_SQL, lambda sql, args: conn.fetchrow(sql, *args),
                                              functools.partial(_changes, conn), retention, now)

    # messages ---------------------------------------------------------------------------------------
    @_bounded
    async def add_message(self, channel: str, sender: str, text: str, ts: str) -> Message:
        """Store a message durably; its id is one more than the channel's last.

        Group-committed (hq/store/batching.py): the messages this node is asked to store while its
        previous batch commits are stored together by :data:`_INSERT_BATCH`, one statement in one
        transaction, and each caller is answered once that transaction has committed.
        """
        return await self._messages.submit(_PendingMessage(channel, sender, text, ts))

    async def _commit_messages(self, batch: Sequence[_PendingMessage]) -> list[Message]:
        """One batch, one round trip, within the store's deadline (a failure fails the whole batch)."""
        return await self._within_deadline(self._insert_batch(batch))

    async def _insert_batch(self, batch: Sequence[_PendingMessage]) -> list[Message]:
        # An explicit transaction, though the statement alone would be one: a statement that reaches a
        # frozen server after HQ gave up on it would still run and commit on its own when the server
        # wakes, storing messages whose senders were told "unavailable". With BEGIN … COMMIT nothing
        # commits unless HQ sends the COMMIT. The price is two short round trips a batch, and the
        # counter rows stay locked from the statement to the COMMIT: one round trip, once a batch.
        async with self._connection() as conn, conn.transaction():
            numbered = await conn.fetch(_INSERT_BATCH, [m.channel for m in batch], [m.sender for m in batch],
                                        [m.text for m in batch], [m.ts for m in batch])
        return [Message(int(row["id"]), m.channel, m.sender, m.text, m.ts) for row, m in zip(numbered, batch, strict=True)]

    @_bounded
    async def history(self, channel: str, after_id: int | None, limit: int) -> list[Message]:
        """Up to ``limit`` messages after ``after_id`` (or the latest ``limit``), oldest first."""
        if after_id is None:
            found = await self._fetch(_SQL.latest_messages, channel, limit)
        else:
            found = await self._fetch(_SQL.messages_after, channel, after_id, limit)
        return [rows.message(r) for r in found]

    @_bounded
    async def last_message_id(self, channel: str) -> int:
        """The channel's newest message id (0 when empty)."""
        return int(await self._fetchval(_SQL.last_message_id, channel))

    # second factors ----------------------------------------------------------------------------
    # Under READ COMMITTED a second UPDATE of the same row waits for the first and re-checks its
    # WHERE against what it wrote, so two nodes accepting the same code at the same moment cannot
    # both succeed.
    @_bounded
    async def get_mfa(self, codename: str) -> MfaRecord | None:
        """The agent's enrolment, confirmed or pending."""
        return rows.mfa(await self._fetchrow(_SQL.mfa, codename.lower()))

    @_bounded
    async def begin_mfa(self, codename: str, secret_box: str) -> bool:
        """Store a pending secret (replacing a pending one); False if a confirmed one exists."""
        return await self._fetchval(_SQL.begin_mfa, codename.lower(), secret_box, rows.now_iso()) is not None

    @_bounded
    async def confirm_mfa(self, codename: str, secret_box: str, step: int, recovery_hashes: list[str]) -> bool:
        """Confirm the pending ``secret_box`` and replace the recovery codes, in one transaction."""
        key = codename.lower()
        async with self._connection() as conn, conn.transaction():
            if await conn.fetchval(_SQL.confirm_mfa, step, key, secret_box) is None:
                return False
            await conn.execute(_SQL.delete_recovery_codes, key)
            await conn.executemany(_SQL.insert_recovery_code, [(key, h) for h in recovery_hashes])
        return True

    @_bounded
    async def use_totp_step(self, codename: str, step: int) -> bool:
        """Record ``step`` as used unless it, or a later one, already was."""
        return await self._fetchval(_SQL.use_totp_step, step, codename.lower()) is not None

    @_bounded
    async def use_recovery_code(self, codename: str, code_hash: str, now: float) -> bool:
        """Spend one unspent recovery code."""
        return await self._fetchval(_SQL.use_recovery_code, now, codename.lower(), code_hash) is not None

    @_bounded
    async def reset_mfa(self, codename: str) -> bool:
        """Remove the agent's second factor and its recovery codes."""
        key = codename.lower()
        async with self._connection() as conn, conn.transaction():
            await conn.execute(_SQL.delete_recovery_codes, key)
            removed = await conn.fetchval(_SQL.delete_mfa, key)
        return removed is not None
