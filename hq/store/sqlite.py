"""The embedded store: one SQLite file in WAL mode, written through aiosqlite.

Every operation runs under one lock so that multi-statement transactions never interleave on the
shared connection; ``synchronous=FULL`` makes a committed message survive a crash or power loss.
Other processes (the operator CLI) may open the same file; ``busy_timeout`` makes them wait.
Only one HQ process may serve from a file (it numbers the messages); several nodes use PostgreSQL.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiosqlite

from .base import AgentExistsError, UnknownAgentError
from .models import (AGENT_AND_SESSION, REFRESH_TOKEN_AND_SESSION, SUPERSEDE_CHILD, Agent, LoginSession, Message,
                     RefreshOutcome, RefreshResult, Revocation, in_grace_window)
from .models import LIVE_SESSIONS
from .models import MFA_RECORD, MfaRecord

SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
    codename TEXT NOT NULL,
    codename_key TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    enabled INTEGER NOT NULL DEFAULT 1,
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
    expires_at REAL NOT NULL,
    used_at REAL
);
-- The directors' API lists sessions with a live refresh token (live_sessions).
CREATE INDEX IF NOT EXISTS refresh_tokens_unspent ON refresh_tokens (expires_at) WHERE used_at IS NULL;
-- The token each rotation issued, so a retry of a just-rotated token can find (and spend) it.
-- A table of its own rather than a column: files made before it gain it without a migration.
CREATE TABLE IF NOT EXISTS refresh_successors (
    parent_hash TEXT PRIMARY KEY,
    child_hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS revocations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    codename TEXT NOT NULL,
    sid TEXT,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    channel TEXT NOT NULL,
    id INTEGER NOT NULL,
    sender TEXT NOT NULL,
    text TEXT NOT NULL,
    ts TEXT NOT NULL,
    PRIMARY KEY (channel, id)
) WITHOUT ROWID;
-- Second factors (hq/auth/mfa.py): the TOTP secret sealed with HQ's MFA key, never in the clear.
CREATE TABLE IF NOT EXISTS mfa_factors (
    codename_key TEXT PRIMARY KEY,
    secret_box TEXT NOT NULL,
    confirmed INTEGER NOT NULL DEFAULT 0,
    last_step INTEGER,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS mfa_recovery_codes (
    codename_key TEXT NOT NULL,
    code_hash TEXT NOT NULL,
    used_at REAL,
    PRIMARY KEY (codename_key, code_hash)
) WITHOUT ROWID;
"""


# Five parameters a row; SQLite allows 32766 parameters a statement.
_ROWS_PER_INSERT = 1000
_PendingMessage = tuple[str, str, str, str, "asyncio.Future[Message]"]


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _agent(row: aiosqlite.Row | None) -> Agent | None:
    if row is None:
        return None
    return Agent(codename=row["codename"], role=row["role"], enabled=bool(row["enabled"]),
                 created=row["created"], password_hash=row["password_hash"])


def _joined_session(row: Any) -> LoginSession | None:
    if row is None or row["sid"] is None:
        return None
    return LoginSession(row["sid"], row["codename_key"], row["session_created"], row["revoked_reason"])


def _message(row: aiosqlite.Row) -> Message:
    return Message(id=row["id"], channel=row["channel"], sender=row["sender"], text=row["text"], ts=row["ts"])


class SQLiteStore:
    """The :class:`~hq.store.base.Store` on an SQLite file."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._db: aiosqlite.Connection | None = None
        self._committing = False
        self._lock = asyncio.Lock()
        self._pending: list[_PendingMessage] = []
        self._flusher: asyncio.Task[None] | None = None
        # Message ids are assigned here; one HQ process owns an SQLite file's messages.
        self._last_ids: dict[str, int] = {}

    @property
    def db(self) -> aiosqlite.Connection:
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
        await self._db.executescript(SCHEMA)

    async def close(self) -> None:
        """Finish pending commits, then close the connection."""
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def ping(self) -> None:
        """Raise if the database cannot answer."""
        async with self._lock:
            await self.db.execute("SELECT 1")

    async def _one(self, sql: str, *args: object) -> aiosqlite.Row | None:
        async with self._lock:
            async with self.db.execute(sql, args) as cur:
                return await cur.fetchone()

    async def _all(self, sql: str, *args: object) -> list[aiosqlite.Row]:
        async with self._lock:
            async with self.db.execute(sql, args) as cur:
                return list(await cur.fetchall())

    # agents ---------------------------------------------------------------------------------
    async def add_agent(self, codename: str, role: str, password_hash: str) -> Agent:
        """Create an agent; raises :class:`AgentExistsError` for a taken codename (any case)."""
        created = _now_iso()
        try:
            async with self._lock:
                await self.db.execute(
                    "INSERT INTO agents (codename, codename_key, role, password_hash, enabled, created)"
                    " VALUES (?, ?, ?, ?, 1, ?)", (codename, codename.lower(), role, password_hash, created))
        except aiosqlite.IntegrityError:
            raise AgentExistsError(codename) from None
        return Agent(codename, role, True, created, password_hash)

    async def get_agent(self, codename: str) -> Agent | None:
        """The agent with that codename, compared regardless of case."""
        return _agent(await self._one("SELECT * FROM agents WHERE codename_key = ?", codename.lower()))

    async def list_agents(self) -> list[Agent]:
        """Every agent, oldest first."""
        rows = await self._all("SELECT * FROM agents ORDER BY created, codename_key")
        return [a for a in map(_agent, rows) if a is not None]

    async def count_agents(self) -> int:
        """How many agents exist."""
        row = await self._one("SELECT COUNT(*) AS n FROM agents")
        return int(row["n"]) if row else 0

    async def set_password(self, codename: str, password_hash: str) -> Agent:
        """Replace an agent's password hash."""
        return await self._update_agent(codename, "password_hash = ?", password_hash)

    async def set_enabled(self, codename: str, enabled: bool) -> Agent:
        """Enable or disable an agent."""
        return await self._update_agent(codename, "enabled = ?", int(enabled))

    async def set_role(self, codename: str, role: str) -> Agent:
        """Change an agent's clearance level."""
        return await self._update_agent(codename, "role = ?", role)

    async def _update_agent(self, codename: str, assignment: str, value: object) -> Agent:
        async with self._lock:
            cur = await self.db.execute(
                f"UPDATE agents SET {assignment} WHERE codename_key = ? RETURNING *", (value, codename.lower()))
            row = await cur.fetchone()
            await cur.close()
        agent = _agent(row)
        if agent is None:
            raise UnknownAgentError(codename)
        return agent

    # sessions and revocation -----------------------------------------------------------------
    async def create_session(self, sid: str, codename: str) -> None:
        """Record a new login session."""
        async with self._lock:
            await self.db.execute("INSERT INTO sessions (sid, codename_key, created) VALUES (?, ?, ?)",
                                  (sid, codename.lower(), _now_iso()))

    async def get_session(self, sid: str) -> LoginSession | None:
        """A login session by id."""
        row = await self._one("SELECT * FROM sessions WHERE sid = ?", sid)
        if row is None:
            return None
        return LoginSession(row["sid"], row["codename_key"], row["created"], row["revoked_reason"])

    async def get_agent_and_session(self, codename: str, sid: str) -> tuple[Agent | None, LoginSession | None]:
        """An agent and one login session in one query (the connect path asks for both)."""
        row = await self._one(AGENT_AND_SESSION.format(p1="?", p2="?"), sid, codename.lower())
        return _agent(row), _joined_session(row)

    async def revoke_sessions(self, codename: str, reason: str, sid: str | None = None) -> list[str]:
        """Revoke one session (``sid``) or all of an agent's, and append to the revocation feed."""
        async with self._lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                sids = await self._revoke_locked(codename, reason, sid)
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
        return sids

    async def _revoke_locked(self, codename: str, reason: str, sid: str | None) -> list[str]:
        where, args = ("sid = ?", (sid,)) if sid else ("codename_key = ?", (codename.lower(),))
        cur = await self.db.execute(
            f"UPDATE sessions SET revoked_reason = ? WHERE {where} AND revoked_reason IS NULL RETURNING sid",
            (reason, *args))
        sids = [r["sid"] for r in await cur.fetchall()]
        await cur.close()
        await self.db.execute("INSERT INTO revocations (codename, sid, reason) VALUES (?, ?, ?)",
                              (codename.lower(), sid, reason))
        return sids

    async def revocations_after(self, cursor: int) -> list[Revocation]:
        """Feed entries newer than ``cursor``, oldest first."""
        rows = await self._all("SELECT * FROM revocations WHERE id > ? ORDER BY id", cursor)
        return [Revocation(r["id"], r["codename"], r["sid"], r["reason"]) for r in rows]

    async def last_revocation_id(self) -> int:
        """The newest feed entry's id (0 when empty)."""
        row = await self._one("SELECT COALESCE(MAX(id), 0) AS n FROM revocations")
        return int(row["n"]) if row else 0

    # the directors' API ---------------------------------------------------------------------------
    async def last_logins(self) -> dict[str, str]:
        """Lower-case codename -> ``created`` of its newest login session, for every agent that has one."""
        rows = await self._all("SELECT codename_key, MAX(created) AS last FROM sessions GROUP BY codename_key")
        return {r["codename_key"]: r["last"] for r in rows}

    async def live_sessions(self, now: float) -> list[LoginSession]:
        """Unrevoked login sessions holding a refresh token that is neither spent nor expired at ``now``."""
        rows = await self._all(LIVE_SESSIONS.format(p1="?"), now)
        return [LoginSession(r["sid"], r["codename_key"], r["created"], r["revoked_reason"]) for r in rows]

    async def codenames_with_mfa(self) -> set[str]:
        """Lower-case codenames of every agent with a confirmed second factor."""
        rows = await self._all("SELECT codename_key FROM mfa_factors WHERE confirmed = 1")
        return {r["codename_key"] for r in rows}

    # refresh tokens ---------------------------------------------------------------------------
    async def add_refresh_token(self, token_hash: str, sid: str, expires_at: float) -> None:
        """Store a new refresh token's hash."""
        async with self._lock:
            await self.db.execute("INSERT INTO refresh_tokens (token_hash, sid, expires_at) VALUES (?, ?, ?)",
                                  (token_hash, sid, expires_at))

    async def rotate_refresh_token(self, old_hash: str, new_hash: str, new_expires_at: float,
                                   now: float, grace: float = 0.0) -> RefreshResult:
        """Spend ``old_hash`` and store ``new_hash`` atomically; a second use revokes the session.

        A retry within ``grace`` seconds is the exception: see :meth:`hq.store.base.Store.rotate_refresh_token`.
        """
        async with self._lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                result = await self._rotate_locked(old_hash, new_hash, new_expires_at, now, grace)
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
        return result

    async def _rotate_locked(self, old_hash: str, new_hash: str, new_expires_at: float,
                             now: float, grace: float) -> RefreshResult:
        cur = await self.db.execute(REFRESH_TOKEN_AND_SESSION.format(p1="?"), (old_hash,))
        row = await cur.fetchone()
        await cur.close()
        if row is None:
            return RefreshResult(RefreshOutcome.UNKNOWN)
        sid, codename = row["sid"], row["codename_key"]
        if row["used_at"] is not None:
            if (row["revoked_reason"] is None and row["expires_at"] > now
                    and in_grace_window(row["used_at"], now, grace)
                    and await self._retry_locked(old_hash, new_hash, sid, new_expires_at, now)):
                return RefreshResult(RefreshOutcome.GRACE, sid, codename)
            await self._revoke_locked(codename, "revoked", sid)
            return RefreshResult(RefreshOutcome.REUSED, sid, codename)
        if row["revoked_reason"] is not None:
            return RefreshResult(RefreshOutcome.UNKNOWN, sid, codename)
        if row["expires_at"] <= now:
            return RefreshResult(RefreshOutcome.EXPIRED, sid, codename)
        await self.db.execute("UPDATE refresh_tokens SET used_at = ? WHERE token_hash = ?", (now, old_hash))
        await self.db.execute("INSERT INTO refresh_tokens (token_hash, sid, expires_at) VALUES (?, ?, ?)",
                              (new_hash, sid, new_expires_at))
        await self.db.execute("INSERT INTO refresh_successors (parent_hash, child_hash) VALUES (?, ?)",
                              (old_hash, new_hash))
        return RefreshResult(RefreshOutcome.ROTATED, sid, codename)

    async def _retry_locked(self, old_hash: str, new_hash: str, sid: str, new_expires_at: float,
                            now: float) -> bool:
        """Re-issue from ``old_hash`` if its child is unspent, spending that child; False if it is not.

        The parent's ``used_at`` stays as it was, so retries cannot stretch the window.
        """
        cur = await self.db.execute(SUPERSEDE_CHILD.format(p1="?", p2="?"), (now, old_hash))
        superseded = await cur.fetchone()
        await cur.close()
        if superseded is None:
            return False
        await self.db.execute("INSERT INTO refresh_tokens (token_hash, sid, expires_at) VALUES (?, ?, ?)",
                              (new_hash, sid, new_expires_at))
        await self.db.execute("UPDATE refresh_successors SET child_hash = ? WHERE parent_hash = ?",
                              (new_hash, old_hash))
        return True

    # messages --------------------------------------------------------------------------------
    async def add_message(self, channel: str, sender: str, text: str, ts: str) -> Message:
        """Store a message durably; its id is one more than the channel's last.

        Concurrent calls are group-committed: one transaction (one fsync) for every message that
        arrived while the previous commit ran, and each caller resumes only after its commit.
        """
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending.append((channel, sender, text, ts, future))
        if not self._committing and (self._flusher is None or self._flusher.done()):
            # No commit in flight: this caller commits what is pending itself (no task for an
            # uncontended message); what arrives meanwhile is committed by one task, group by group.
            self._committing = True
            try:
                batch, self._pending = self._pending, []
                for offset in range(0, len(batch), _ROWS_PER_INSERT):
                    await self._commit_chunk(batch[offset:offset + _ROWS_PER_INSERT])
            finally:
                self._committing = False
            if self._pending:
                self._flusher = asyncio.create_task(self._flush_pending())
        return await future

    async def _flush_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            for offset in range(0, len(batch), _ROWS_PER_INSERT):
                await self._commit_chunk(batch[offset:offset + _ROWS_PER_INSERT])

    async def _commit_chunk(self, chunk: list[_PendingMessage]) -> None:
        try:
            async with self._lock:
                messages = await self._insert_chunk(chunk)
        except Exception as exc:
            self._last_ids.clear()
            for *_, future in chunk:
                if not future.done():
                    future.set_exception(exc)
            return
        for message, (*_, future) in zip(messages, chunk):
            if not future.done():
                future.set_result(message)

    async def _insert_chunk(self, chunk: list[_PendingMessage]) -> list[Message]:
        messages = []
        for channel, sender, text, ts, _ in chunk:
            if channel not in self._last_ids:
                async with self.db.execute("SELECT COALESCE(MAX(id), 0) FROM messages WHERE channel = ?",
                                           (channel,)) as cur:
                    row = await cur.fetchone()
                self._last_ids[channel] = int(row[0]) if row else 0
            self._last_ids[channel] += 1
            messages.append(Message(self._last_ids[channel], channel, sender, text, ts))
        # One multi-row INSERT is one atomic statement: one hand-off to the SQLite thread, one fsync.
        rows = ", ".join(["(?, ?, ?, ?, ?)"] * len(messages))
        values = [v for m in messages for v in (m.channel, m.id, m.sender, m.text, m.ts)]
        await self.db.execute(f"INSERT INTO messages (channel, id, sender, text, ts) VALUES {rows}", values)
        return messages

    async def history(self, channel: str, after_id: int | None, limit: int) -> list[Message]:
        """Up to ``limit`` messages after ``after_id`` (or the latest ``limit``), oldest first."""
        if after_id is None:
            rows = await self._all(
                "SELECT * FROM (SELECT * FROM messages WHERE channel = ? ORDER BY id DESC LIMIT ?) ORDER BY id",
                channel, limit)
        else:
            rows = await self._all("SELECT * FROM messages WHERE channel = ? AND id > ? ORDER BY id LIMIT ?",
                                   channel, after_id, limit)
        return [_message(r) for r in rows]

    async def last_message_id(self, channel: str) -> int:
        """The channel's newest message id (0 when empty)."""
        row = await self._one("SELECT COALESCE(MAX(id), 0) AS n FROM messages WHERE channel = ?", channel)
        return int(row["n"]) if row else 0

    # second factors ----------------------------------------------------------------------------
    async def get_mfa(self, codename: str) -> MfaRecord | None:
        """The agent's enrolment, confirmed or pending."""
        return _mfa(await self._one(MFA_RECORD.format(p1="?"), codename.lower()))

    async def begin_mfa(self, codename: str, secret_box: str) -> bool:
        """Store a pending secret (replacing a pending one); False if a confirmed one exists."""
        row = await self._one(
            "INSERT INTO mfa_factors (codename_key, secret_box, confirmed, last_step, created)"
            " VALUES (?, ?, 0, NULL, ?) ON CONFLICT (codename_key) DO UPDATE"
            " SET secret_box = excluded.secret_box, created = excluded.created"
            " WHERE mfa_factors.confirmed = 0 RETURNING codename_key", codename.lower(), secret_box, _now_iso())
        return row is not None

    async def confirm_mfa(self, codename: str, secret_box: str, step: int, recovery_hashes: list[str]) -> bool:
        """Confirm the pending ``secret_box`` and replace the recovery codes, in one transaction."""
        key = codename.lower()
        async with self._lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                cur = await self.db.execute(
                    "UPDATE mfa_factors SET confirmed = 1, last_step = ? WHERE codename_key = ?"
                    " AND confirmed = 0 AND secret_box = ? RETURNING codename_key", (step, key, secret_box))
                confirmed = await cur.fetchone() is not None
                await cur.close()
                if confirmed:
                    await self.db.execute("DELETE FROM mfa_recovery_codes WHERE codename_key = ?", (key,))
                    await self.db.executemany("INSERT INTO mfa_recovery_codes (codename_key, code_hash) VALUES (?, ?)",
                                              [(key, h) for h in recovery_hashes])
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
        return confirmed

    async def use_totp_step(self, codename: str, step: int) -> bool:
        """Record ``step`` as used unless it, or a later one, already was."""
        row = await self._one(
            "UPDATE mfa_factors SET last_step = ? WHERE codename_key = ? AND confirmed = 1"
            " AND (last_step IS NULL OR last_step < ?) RETURNING codename_key", step, codename.lower(), step)
        return row is not None

    async def use_recovery_code(self, codename: str, code_hash: str, now: float) -> bool:
        """Spend one unspent recovery code."""
        row = await self._one(
            "UPDATE mfa_recovery_codes SET used_at = ? WHERE codename_key = ? AND code_hash = ? AND used_at IS NULL"
            " AND EXISTS (SELECT 1 FROM mfa_factors f WHERE f.codename_key = mfa_recovery_codes.codename_key"
            " AND f.confirmed = 1) RETURNING code_hash", now, codename.lower(), code_hash)
        return row is not None

    async def reset_mfa(self, codename: str) -> bool:
        """Remove the agent's second factor and its recovery codes."""
        key = codename.lower()
        async with self._lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                await self.db.execute("DELETE FROM mfa_recovery_codes WHERE codename_key = ?", (key,))
                cur = await self.db.execute("DELETE FROM mfa_factors WHERE codename_key = ? RETURNING codename_key",
                                            (key,))
                removed = await cur.fetchone() is not None
                await cur.close()
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
        return removed


def _mfa(row: Any) -> MfaRecord | None:
    if row is None:
        return None
    return MfaRecord(row["codename_key"], row["secret_box"], bool(row["confirmed"]), row["last_step"],
                     int(row["codes_left"]))
