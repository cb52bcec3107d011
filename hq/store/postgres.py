"""The shared store for several HQ nodes: PostgreSQL through asyncpg.

The same tables as the SQLite store. Per-channel message ids come from a ``channels`` row locked
for the insert, so concurrent writers on different nodes never hand out the same id.
"""

from __future__ import annotations

from datetime import datetime, timezone

import asyncpg

from .base import AgentExistsError, UnknownAgentError
from .models import (AGENT_AND_SESSION, REFRESH_TOKEN_AND_SESSION, SUPERSEDE_CHILD, Agent, LoginSession, Message,
                     RefreshOutcome, RefreshResult, Revocation, in_grace_window)

SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
    codename TEXT NOT NULL,
    codename_key TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    sid TEXT PRIMARY KEY,
    codename_key TEXT NOT NULL,
    created TEXT NOT NULL,
    revoked_reason TEXT
);
CREATE INDEX IF NOT EXISTS sessions_by_agent ON sessions (codename_key);
CREATE TABLE IF NOT EXISTS refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    sid TEXT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    used_at DOUBLE PRECISION
);
-- The token each rotation issued, so a retry of a just-rotated token can find (and spend) it.
-- A table of its own rather than a column: databases made before it gain it without a migration.
CREATE TABLE IF NOT EXISTS refresh_successors (
    parent_hash TEXT PRIMARY KEY,
    child_hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS revocations (
    id BIGSERIAL PRIMARY KEY,
    codename TEXT NOT NULL,
    sid TEXT,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS channels (
    name TEXT PRIMARY KEY,
    last_id BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS messages (
    channel TEXT NOT NULL,
    id BIGINT NOT NULL,
    sender TEXT NOT NULL,
    text TEXT NOT NULL,
    ts TEXT NOT NULL,
    PRIMARY KEY (channel, id)
);
"""


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _agent(row: asyncpg.Record | None) -> Agent | None:
    if row is None:
        return None
    return Agent(row["codename"], row["role"], row["enabled"], row["created"], row["password_hash"])


def _message(row: asyncpg.Record) -> Message:
    return Message(int(row["id"]), row["channel"], row["sender"], row["text"], row["ts"])


class PostgresStore:
    """The :class:`~hq.store.base.Store` on a PostgreSQL database."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "store is not open"
        return self._pool

    async def open(self) -> None:
        """Connect and create the schema if needed (serialised by an advisory lock)."""
        self._pool = await asyncpg.create_pool(self._url, min_size=1, max_size=10)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(4242)")
            await conn.execute(SCHEMA)

    async def close(self) -> None:
        """Close every connection."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def ping(self) -> None:
        """Raise if the database cannot answer."""
        await self.pool.fetchval("SELECT 1")

    async def add_agent(self, codename: str, role: str, password_hash: str) -> Agent:
        """Create an agent; raises :class:`AgentExistsError` for a taken codename (any case)."""
        created = _now_iso()
        try:
            await self.pool.execute(
                "INSERT INTO agents (codename, codename_key, role, password_hash, enabled, created)"
                " VALUES ($1, $2, $3, $4, TRUE, $5)", codename, codename.lower(), role, password_hash, created)
        except asyncpg.UniqueViolationError:
            raise AgentExistsError(codename) from None
        return Agent(codename, role, True, created, password_hash)

    async def get_agent(self, codename: str) -> Agent | None:
        """The agent with that codename, compared regardless of case."""
        return _agent(await self.pool.fetchrow("SELECT * FROM agents WHERE codename_key = $1", codename.lower()))

    async def list_agents(self) -> list[Agent]:
        """Every agent, oldest first."""
        rows = await self.pool.fetch("SELECT * FROM agents ORDER BY created, codename_key")
        return [a for a in map(_agent, rows) if a is not None]

    async def count_agents(self) -> int:
        """How many agents exist."""
        return int(await self.pool.fetchval("SELECT COUNT(*) FROM agents"))

    async def set_password(self, codename: str, password_hash: str) -> Agent:
        """Replace an agent's password hash."""
        return await self._update_agent(codename, "password_hash", password_hash)

    async def set_enabled(self, codename: str, enabled: bool) -> Agent:
        """Enable or disable an agent."""
        return await self._update_agent(codename, "enabled", enabled)

    async def set_role(self, codename: str, role: str) -> Agent:
        """Change an agent's clearance level."""
        return await self._update_agent(codename, "role", role)

    async def _update_agent(self, codename: str, column: str, value: object) -> Agent:
        row = await self.pool.fetchrow(
            f"UPDATE agents SET {column} = $1 WHERE codename_key = $2 RETURNING *", value, codename.lower())
        agent = _agent(row)
        if agent is None:
            raise UnknownAgentError(codename)
        return agent

    async def create_session(self, sid: str, codename: str) -> None:
        """Record a new login session."""
        await self.pool.execute("INSERT INTO sessions (sid, codename_key, created) VALUES ($1, $2, $3)",
                                sid, codename.lower(), _now_iso())

    async def get_session(self, sid: str) -> LoginSession | None:
        """A login session by id."""
        row = await self.pool.fetchrow("SELECT * FROM sessions WHERE sid = $1", sid)
        if row is None:
            return None
        return LoginSession(row["sid"], row["codename_key"], row["created"], row["revoked_reason"])

    async def get_agent_and_session(self, codename: str, sid: str) -> tuple[Agent | None, LoginSession | None]:
        """An agent and one login session in one query (the connect path asks for both)."""
        row = await self.pool.fetchrow(AGENT_AND_SESSION.format(p1="$1", p2="$2"), sid, codename.lower())
        session = None
        if row is not None and row["sid"] is not None:
            session = LoginSession(row["sid"], row["codename_key"], row["session_created"], row["revoked_reason"])
        return _agent(row), session

    async def revoke_sessions(self, codename: str, reason: str, sid: str | None = None) -> list[str]:
        """Revoke one session (``sid``) or all of an agent's, and append to the revocation feed."""
        async with self.pool.acquire() as conn, conn.transaction():
            return await self._revoke(conn, codename, reason, sid)

    @staticmethod
    async def _revoke(conn: asyncpg.Connection, codename: str, reason: str, sid: str | None) -> list[str]:
        if sid:
            rows = await conn.fetch("UPDATE sessions SET revoked_reason = $1 WHERE sid = $2"
                                    " AND revoked_reason IS NULL RETURNING sid", reason, sid)
        else:
            rows = await conn.fetch("UPDATE sessions SET revoked_reason = $1 WHERE codename_key = $2"
                                    " AND revoked_reason IS NULL RETURNING sid", reason, codename.lower())
        await conn.execute("INSERT INTO revocations (codename, sid, reason) VALUES ($1, $2, $3)",
                           codename.lower(), sid, reason)
        return [r["sid"] for r in rows]

    async def revocations_after(self, cursor: int) -> list[Revocation]:
        """Feed entries newer than ``cursor``, oldest first."""
        rows = await self.pool.fetch("SELECT * FROM revocations WHERE id > $1 ORDER BY id", cursor)
        return [Revocation(int(r["id"]), r["codename"], r["sid"], r["reason"]) for r in rows]

    async def last_revocation_id(self) -> int:
        """The newest feed entry's id (0 when empty)."""
        return int(await self.pool.fetchval("SELECT COALESCE(MAX(id), 0) FROM revocations"))

    async def add_refresh_token(self, token_hash: str, sid: str, expires_at: float) -> None:
        """Store a new refresh token's hash."""
        await self.pool.execute("INSERT INTO refresh_tokens (token_hash, sid, expires_at) VALUES ($1, $2, $3)",
                                token_hash, sid, expires_at)

    async def rotate_refresh_token(self, old_hash: str, new_hash: str, new_expires_at: float,
                                   now: float, grace: float = 0.0) -> RefreshResult:
        """Spend ``old_hash`` and store ``new_hash`` atomically; a second use revokes the session.

        A retry within ``grace`` seconds is the exception: see :meth:`hq.store.base.Store.rotate_refresh_token`.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            # The row lock serialises every use of this token, rotation and retries alike.
            row = await conn.fetchrow(REFRESH_TOKEN_AND_SESSION.format(p1="$1") + " FOR UPDATE OF r", old_hash)
            if row is None:
                return RefreshResult(RefreshOutcome.UNKNOWN)
            sid, codename = row["sid"], row["codename_key"]
            if row["used_at"] is not None:
                if (row["revoked_reason"] is None and row["expires_at"] > now
                        and in_grace_window(row["used_at"], now, grace)
                        and await self._retry(conn, old_hash, new_hash, sid, new_expires_at, now)):
                    return RefreshResult(RefreshOutcome.GRACE, sid, codename)
                await self._revoke(conn, codename, "revoked", sid)
                return RefreshResult(RefreshOutcome.REUSED, sid, codename)
            if row["revoked_reason"] is not None:
                return RefreshResult(RefreshOutcome.UNKNOWN, sid, codename)
            if row["expires_at"] <= now:
                return RefreshResult(RefreshOutcome.EXPIRED, sid, codename)
            await conn.execute("UPDATE refresh_tokens SET used_at = $1 WHERE token_hash = $2", now, old_hash)
            await conn.execute("INSERT INTO refresh_tokens (token_hash, sid, expires_at) VALUES ($1, $2, $3)",
                               new_hash, sid, new_expires_at)
            await conn.execute("INSERT INTO refresh_successors (parent_hash, child_hash) VALUES ($1, $2)",
                               old_hash, new_hash)
            return RefreshResult(RefreshOutcome.ROTATED, sid, codename)

    @staticmethod
    async def _retry(conn: asyncpg.Connection, old_hash: str, new_hash: str, sid: str, new_expires_at: float,
                     now: float) -> bool:
        """Re-issue from ``old_hash`` if its child is unspent, spending that child; False if it is not.

        The parent's ``used_at`` stays as it was, so retries cannot stretch the window. The parent's
        row lock (held by the caller) keeps its successor fixed; this statement runs after that
        lock was granted, so it sees what an earlier retry committed.
        """
        superseded = await conn.fetchval(SUPERSEDE_CHILD.format(p1="$1", p2="$2"), now, old_hash)
        if superseded is None:
            return False
        await conn.execute("INSERT INTO refresh_tokens (token_hash, sid, expires_at) VALUES ($1, $2, $3)",
                           new_hash, sid, new_expires_at)
        await conn.execute("UPDATE refresh_successors SET child_hash = $1 WHERE parent_hash = $2", new_hash, old_hash)
        return True

    async def add_message(self, channel: str, sender: str, text: str, ts: str) -> Message:
        """Store a message durably; its id is one more than the channel's last."""
        async with self.pool.acquire() as conn, conn.transaction():
            message_id = await conn.fetchval(
                "INSERT INTO channels (name, last_id) VALUES ($1, 1) ON CONFLICT (name)"
                " DO UPDATE SET last_id = channels.last_id + 1 RETURNING last_id", channel)
            await conn.execute("INSERT INTO messages (channel, id, sender, text, ts) VALUES ($1, $2, $3, $4, $5)",
                               channel, message_id, sender, text, ts)
        return Message(int(message_id), channel, sender, text, ts)

    async def history(self, channel: str, after_id: int | None, limit: int) -> list[Message]:
        """Up to ``limit`` messages after ``after_id`` (or the latest ``limit``), oldest first."""
        if after_id is None:
            rows = await self.pool.fetch(
                "SELECT * FROM (SELECT * FROM messages WHERE channel = $1 ORDER BY id DESC LIMIT $2) m ORDER BY id",
                channel, limit)
        else:
            rows = await self.pool.fetch(
                "SELECT * FROM messages WHERE channel = $1 AND id > $2 ORDER BY id LIMIT $3", channel, after_id, limit)
        return [_message(r) for r in rows]

    async def last_message_id(self, channel: str) -> int:
        """The channel's newest message id (0 when empty)."""
        return int(await self.pool.fetchval("SELECT COALESCE(MAX(id), 0) FROM messages WHERE channel = $1", channel))
