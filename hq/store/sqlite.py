"""The embedded store: one SQLite file in WAL mode, written through aiosqlite.

Every operation runs under one lock so that multi-statement transactions never interleave on the
shared connection; ``synchronous=FULL`` makes a committed message survive a crash or power loss.
Other processes (the operator CLI) may open the same file; ``busy_timeout`` makes them wait.
Only one HQ process may serve from a file (it numbers the messages); several nodes use PostgreSQL.
The tables, the shared statements and the refresh-token rule are the PostgreSQL store's too
(hq/store/schema.py, queries.py, rules.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from pathlib import Path
from typing import AsyncIterator, Iterable, NamedTuple, Sequence

import aiosqlite

from . import rows
from .base import AgentExistsError, ServiceKeyExistsError, UnknownAgentError
from .batching import GroupCommit
from .dialect import SQLITE
from .models import Agent, LoginSession, Message, MfaRecord, RefreshResult, Revocation, ServiceKey
from .pruning import PruneReport, Retention, prune_in_transaction
from .queries import Queries
from .rotation import rotate_in_transaction
from .rules import RotationRequest
from .schema import schema

_SQL = Queries(SQLITE)

# Five parameters a row; SQLite allows 32766 parameters a statement.
_ROWS_PER_INSERT = 1000


class _PendingMessage(NamedTuple):
    """A message waiting for its batch."""

    channel: str
    sender: str
    text: str
    ts: str


async def _fetchone(db: aiosqlite.Connection, sql: str, args: Iterable[object] = ()) -> aiosqlite.Row | None:
    async with db.execute(sql, tuple(args)) as cur:
        return await cur.fetchone()


async def _fetchall(db: aiosqlite.Connection, sql: str, args: Iterable[object] = ()) -> list[aiosqlite.Row]:
    async with db.execute(sql, tuple(args)) as cur:
        return list(await cur.fetchall())


async def _changes(db: aiosqlite.Connection, sql: str, args: Iterable[object] = ()) -> int:
    """Run one statement; how many rows it changed."""
    async with db.execute(sql, tuple(args)) as cur:
        return cur.rowcount


class SQLiteStore:
    """The :class:`~hq.store.base.Store` on an SQLite file."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._messages: GroupCommit[_PendingMessage, Message] = GroupCommit(
            self._commit_messages, _ROWS_PER_INSERT, name="sqlite-group-commit")
        # Message ids are assigned here; one HQ process owns an SQLite file's messages.
        self._last_ids: dict[str, int] = {}

    @property
    def db(self) -> aiosqlite.Connection:
        """The open connection."""
        assert self._db is not None, "store is not open"
        return self._db

    async def open(self) -> None:
        """Open the file, creating it (owner-only) and the schema if needed."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        if not self._path.exists():
            self._path.touch(mode=0o600)
        self._db = await aiosqlite.connect(self._path, isolation_level=None)
        self._db.row_factory = aiosqlite.Row
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=5000", "foreign_keys=ON"):
            await self._db.execute(f"PRAGMA {pragma}")
        await self._db.executescript(schema(SQLITE))

    async def close(self) -> None:
        """Finish pending commits, then close the connection."""
        await self._messages.close()
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def ping(self) -> None:
        """Raise if the database cannot answer."""
        async with self._lock:
            await self.db.execute("SELECT 1")

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """The connection, under the store's lock, in one ``BEGIN IMMEDIATE`` transaction: committed
        when the block ends, rolled back if it (or the commit) fails or is cancelled.

        IMMEDIATE takes the write lock at once, so another process (the CLI) cannot change what
        the block has read before it writes.
        """
        async with self._lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise

    async def _one(self, sql: str, *args: object) -> aiosqlite.Row | None:
        async with self._lock:
            return await _fetchone(self.db, sql, args)

    async def _all(self, sql: str, *args: object) -> list[aiosqlite.Row]:
        async with self._lock:
            return await _fetchall(self.db, sql, args)

    # agents ---------------------------------------------------------------------------------
    async def add_agent(self, codename: str, role: str, password_hash: str) -> Agent:
        """Create an agent; raises :class:`AgentExistsError` for a taken codename (any case)."""
        created = rows.now_iso()
        try:
            async with self._lock:
                await self.db.execute(_SQL.insert_agent, (codename, codename.lower(), role, password_hash, created))
        except aiosqlite.IntegrityError:
            raise AgentExistsError(codename) from None
        return Agent(codename, role, True, created, password_hash)

    async def get_agent(self, codename: str) -> Agent | None:
        """The agent with that codename, compared regardless of case."""
        return rows.agent(await self._one(_SQL.agent, codename.lower()))

    async def list_agents(self) -> list[Agent]:
        """Every agent, oldest first."""
        return [a for a in map(rows.agent, await self._all(_SQL.agents)) if a is not None]

    async def count_agents(self) -> int:
        """How many agents exist."""
        row = await self._one(_SQL.count_agents)
        return int(row["n"]) if row else 0

    async def set_password(self, codename: str, password_hash: str) -> Agent:
        """Replace an agent's password hash."""
        return await self._update_agent(codename, _SQL.set_password, password_hash)

    async def set_enabled(self, codename: str, enabled: bool) -> Agent:
        """Enable or disable an agent."""
        return await self._update_agent(codename, _SQL.set_enabled, enabled)

    async def set_role(self, codename: str, role: str) -> Agent:
        """Change an agent's clearance level."""
        return await self._update_agent(codename, _SQL.set_role, role)

    async def _update_agent(self, codename: str, update: str, value: object) -> Agent:
        agent = rows.agent(await self._one(update, value, codename.lower()))
        if agent is None:
            raise UnknownAgentError(codename)
        return agent

    # sessions and revocation -----------------------------------------------------------------
    async def create_session(self, session_id: str, codename: str) -> None:
        """Record a new login session."""
        async with self._lock:
            await self.db.execute(_SQL.insert_session, (session_id, codename.lower(), rows.now_iso()))

    async def get_session(self, session_id: str) -> LoginSession | None:
        """A login session by id."""
        return rows.session(await self._one(_SQL.session, session_id))

    async def get_agent_and_session(self, codename: str, session_id: str) -> tuple[Agent | None, LoginSession | None]:
        """An agent and one login session in one query (the connect path asks for both)."""
        row = await self._one(_SQL.agent_and_session, session_id, codename.lower())
        return rows.agent(row), rows.joined_session(row)

    async def revoke_sessions(self, codename: str, reason: str, session_id: str | None = None) -> list[str]:
        """Revoke one session (``session_id``) or all of an agent's, and append to the revocation feed."""
        revoke, record = _SQL.revocation(codename, reason, session_id)
        async with self._transaction() as db:
            revoked = await _fetchall(db, *revoke)
            await db.execute(*record)
        return [r["sid"] for r in revoked]

    async def revocations_after(self, cursor: int) -> list[Revocation]:
        """Feed entries newer than ``cursor``, oldest first."""
        return [rows.revocation(r) for r in await self._all(_SQL.revocations_after, cursor)]

    async def last_revocation_id(self) -> int:
        """The newest feed entry's id (0 when empty)."""
        row = await self._one(_SQL.last_revocation_id)
        return int(row["n"]) if row else 0

    # the directors' API ---------------------------------------------------------------------------
    async def last_logins(self) -> dict[str, str]:
        """Lower-case codename -> ``created`` of its newest login session, for every agent that has one."""
        return {r["codename_key"]: r["last"] for r in await self._all(_SQL.last_logins)}

    async def live_sessions(self, now: float) -> list[LoginSession]:
        """Unrevoked login sessions holding a refresh token that is neither spent nor expired at ``now``."""
        return [s for s in map(rows.session, await self._all(_SQL.live_sessions, now)) if s is not None]

    async def codenames_with_mfa(self) -> set[str]:
        """Lower-case codenames of every agent with a confirmed second factor."""
        return {r["codename_key"] for r in await self._all(_SQL.codenames_with_mfa)}

    # refresh tokens ---------------------------------------------------------------------------
    async def add_refresh_token(self, token_hash: str, session_id: str, expires_at: float) -> None:
        """Store a new refresh token's hash."""
        async with self._lock:
            await self.db.execute(_SQL.insert_refresh_token, (token_hash, session_id, expires_at))

    # service keys ------------------------------------------------------------------------------
    async def add_service_key(self, key_id: str, name: str, role: str, key_hash: str) -> ServiceKey:
        """Store a new key by its hash; :class:`ServiceKeyExistsError` for a live key's name (any case)."""
        created = rows.now_iso()
        try:
            async with self._lock:
                await self.db.execute(_SQL.insert_service_key, (key_id, name, name.lower(), role, key_hash, created))
        except aiosqlite.IntegrityError:
            raise ServiceKeyExistsError(name) from None
        return ServiceKey(key_id, name, role, created, None, None)

    async def list_service_keys(self) -> list[ServiceKey]:
        """Every key not revoked, oldest first."""
        return [k for k in map(rows.service_key, await self._all(_SQL.service_keys)) if k is not None]

    async def service_key_by_hash(self, key_hash: str) -> ServiceKey | None:
        """The key (revoked or not) stored under ``key_hash``."""
        return rows.service_key(await self._one(_SQL.service_key_by_hash, key_hash))

    async def revoke_service_key(self, name: str) -> ServiceKey | None:
        """Revoke the live key named ``name`` and append it to the revocation feed, in one transaction."""
        async with self._transaction() as db:
            key = rows.service_key(await _fetchone(db, *_SQL.service_key_revocation(name, rows.now_iso())))
            if key is not None:
                await db.execute(*_SQL.service_key_feed_entry(key.name, key.key_id))
        return key

    async def touch_service_keys(self, last_used: dict[str, str]) -> None:
        """Record when keys were last used, in one transaction."""
        async with self._transaction() as db:
            await db.executemany(_SQL.touch_service_key, [(at, key_id) for key_id, at in last_used.items()])

    async def rotate_refresh_token(self, old_hash: str, new_hash: str, new_expires_at: float,
                                   now: float, grace: float = 0.0) -> RefreshResult:
        """Spend ``old_hash`` and store ``new_hash`` atomically; a second use revokes the session.

        A retry within ``grace`` seconds is the exception: see :meth:`hq.store.base.Store.rotate_refresh_token`.
        """
        request = RotationRequest(old_hash, new_hash, new_expires_at, now, grace)
        async with self._transaction() as db:
            return await rotate_in_transaction(_SQL, functools.partial(_fetchone, db), request)

    async def prune(self, retention: Retention, now: float) -> PruneReport | None:
        """Delete what nothing needs any more (hq/store/pruning.py); this process is the only pruner."""
        async with self._transaction() as db:
            return await prune_in_transaction(_SQL, functools.partial(_fetchone, db),
                                              functools.partial(_changes, db), retention, now)

    # messages --------------------------------------------------------------------------------
    async def add_message(self, channel: str, sender: str, text: str, ts: str) -> Message:
        """Store a message durably; its id is one more than the channel's last.

        Concurrent calls are group-committed (hq/store/batching.py): one transaction (one fsync)
        for the messages that arrived while the previous commit ran, and each caller resumes only
        after its commit.
        """
        return await self._messages.submit(_PendingMessage(channel, sender, text, ts))

    async def _commit_messages(self, batch: Sequence[_PendingMessage]) -> list[Message]:
        """Number and insert one batch in one statement (one atomic commit, one fsync)."""
        try:
            async with self._lock:
                return await self._insert_batch(batch)
        except Exception:
            self._last_ids.clear()  # the batch's ids were not used: read the counters again
            raise

    async def _insert_batch(self, batch: Sequence[_PendingMessage]) -> list[Message]:
        messages = []
        for channel, sender, text, ts in batch:
            if channel not in self._last_ids:
                row = await _fetchone(self.db, _SQL.last_message_id, (channel,))
                self._last_ids[channel] = int(row["n"]) if row else 0
            self._last_ids[channel] += 1
            messages.append(Message(self._last_ids[channel], channel, sender, text, ts))
        # One multi-row INSERT is one atomic statement: one hand-off to the SQLite thread, one fsync.
        placeholders = ", ".join(["(?, ?, ?, ?, ?)"] * len(messages))
        values = [v for m in messages for v in (m.channel, m.id, m.sender, m.text, m.ts)]
        await self.db.execute(f"INSERT INTO messages (channel, id, sender, text, ts) VALUES {placeholders}", values)
        return messages

    async def history(self, channel: str, after_id: int | None, limit: int) -> list[Message]:
        """Up to ``limit`` messages after ``after_id`` (or the latest ``limit``), oldest first."""
        if after_id is None:
            found = await self._all(_SQL.latest_messages, channel, limit)
        else:
            found = await self._all(_SQL.messages_after, channel, after_id, limit)
        return [rows.message(r) for r in found]

    async def last_message_id(self, channel: str) -> int:
        """The channel's newest message id (0 when empty)."""
        row = await self._one(_SQL.last_message_id, channel)
        return int(row["n"]) if row else 0

    # second factors ----------------------------------------------------------------------------
    async def get_mfa(self, codename: str) -> MfaRecord | None:
        """The agent's enrolment, confirmed or pending."""
        return rows.mfa(await self._one(_SQL.mfa, codename.lower()))

    async def begin_mfa(self, codename: str, secret_box: str) -> bool:
        """Store a pending secret (replacing a pending one); False if a confirmed one exists."""
        return await self._one(_SQL.begin_mfa, codename.lower(), secret_box, rows.now_iso()) is not None

    async def confirm_mfa(self, codename: str, secret_box: str, step: int, recovery_hashes: list[str]) -> bool:
        """Confirm the pending ``secret_box`` and replace the recovery codes, in one transaction."""
        key = codename.lower()
        async with self._transaction() as db:
            confirmed = await _fetchone(db, _SQL.confirm_mfa, (step, key, secret_box)) is not None
            if confirmed:
                await db.execute(_SQL.delete_recovery_codes, (key,))
                await db.executemany(_SQL.insert_recovery_code, [(key, h) for h in recovery_hashes])
        return confirmed

    async def use_totp_step(self, codename: str, step: int) -> bool:
        """Record ``step`` as used unless it, or a later one, already was."""
        return await self._one(_SQL.use_totp_step, step, codename.lower()) is not None

    async def use_recovery_code(self, codename: str, code_hash: str, now: float) -> bool:
        """Spend one unspent recovery code."""
        return await self._one(_SQL.use_recovery_code, now, codename.lower(), code_hash) is not None

    async def reset_mfa(self, codename: str) -> bool:
        """Remove the agent's second factor and its recovery codes."""
        key = codename.lower()
        async with self._transaction() as db:
            await db.execute(_SQL.delete_recovery_codes, (key,))
            return await _fetchone(db, _SQL.delete_mfa, (key,)) is not None
