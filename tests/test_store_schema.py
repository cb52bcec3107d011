"""Databases made by HQ before the schema was shared (hq/store/schema.py) open and work unchanged.

The DDL below is what hq/store/sqlite.py and hq/store/postgres.py wrote out until then, verbatim.
Everything a database made from it has must be exactly as in one made by today's store (tables,
columns, types, defaults, keys, indexes); opening it with today's store adds only what was added
since (new tables and indexes, e.g. pruning's), after which the two catalogs are equal; and
today's store must work on it.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import asyncpg

from hq.store import RefreshOutcome, Store, open_store

from .services import create_database, drop_database

SQLITE_DDL_BEFORE_SHARING = """
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

POSTGRESQL_DDL_BEFORE_SHARING = """
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
-- The directors' API lists sessions with a live refresh token (live_sessions).
CREATE INDEX IF NOT EXISTS refresh_tokens_unspent ON refresh_tokens (expires_at) WHERE used_at IS NULL;
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
-- Second factors (hq/auth/mfa.py): the TOTP secret sealed with HQ's MFA key, never in the clear.
CREATE TABLE IF NOT EXISTS mfa_factors (
    codename_key TEXT PRIMARY KEY,
    secret_box TEXT NOT NULL,
    confirmed BOOLEAN NOT NULL DEFAULT FALSE,
    last_step BIGINT,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS mfa_recovery_codes (
    codename_key TEXT NOT NULL,
    code_hash TEXT NOT NULL,
    used_at DOUBLE PRECISION,
    PRIMARY KEY (codename_key, code_hash)
);
"""


async def works(store: Store) -> None:
    """Every kind of statement the store runs, on a store made by the old DDL."""
    agent = await store.add_agent("Viper", "director", "hash")
    assert (await store.set_enabled("viper", False)).enabled is False
    assert (await store.set_enabled("viper", True)).enabled is True and agent.codename == "Viper"
    await store.create_session("s1", "Viper")
    now = time.time()
    await store.add_refresh_token("t0", "s1", now + 60)
    assert (await store.rotate_refresh_token("t0", "t1", now + 60, now, grace=5)).outcome is RefreshOutcome.ROTATED
    assert (await store.rotate_refresh_token("t0", "t2", now + 60, now + 1, grace=5)).outcome is RefreshOutcome.GRACE
    assert [s.session_id for s in await store.live_sessions(now + 1)] == ["s1"]
    assert (await store.rotate_refresh_token("t1", "t3", now + 60, now + 2, grace=5)).outcome is RefreshOutcome.REUSED
    assert (await store.get_session("s1")).revoked_reason == "revoked"
    assert [(r.session_id, r.reason) for r in await store.revocations_after(0)] == [("s1", "revoked")]
    assert [m.id for m in (await store.add_message("hq", "viper", "a", "t"), await store.add_message("hq", "viper", "b", "t"))] == [1, 2]
    assert [m.text for m in await store.history("hq", None, 10)] == ["a", "b"]
    assert await store.begin_mfa("viper", "box") and await store.confirm_mfa("viper", "box", 7, ["r1", "r2"])
    assert await store.use_totp_step("viper", 8) and not await store.use_totp_step("viper", 8)
    assert await store.use_recovery_code("viper", "r1", now)
    record = await store.get_mfa("VIPER")
    assert (record.confirmed, record.last_step, record.recovery_codes_left) == (True, 8, 1)
    assert await store.codenames_with_mfa() == {"viper"}
    assert await store.reset_mfa("viper") and await store.get_mfa("viper") is None


def sqlite_catalog(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name").fetchall()


async def test_an_sqlite_file_made_before_the_shared_schema(tmp_path: Path) -> None:
    old, new = tmp_path / "old.sqlite3", tmp_path / "new.sqlite3"
    with sqlite3.connect(old) as db:
        db.executescript(SQLITE_DDL_BEFORE_SHARING)
    store = open_store(f"sqlite:///{new}")
    await store.open()
    await store.close()
    assert set(sqlite_catalog(old)) < set(sqlite_catalog(new))
    store = open_store(f"sqlite:///{old}")
    await store.open()
    try:
        await works(store)
    finally:
        await store.close()
    assert sqlite_catalog(old) == sqlite_catalog(new)


async def postgresql_catalog(url: str) -> list[tuple[object, ...]]:
    conn = await asyncpg.connect(url)
    try:
        columns = await conn.fetch(
            "SELECT table_name, column_name, ordinal_position, data_type, is_nullable, column_default"
            " FROM information_schema.columns WHERE table_schema = 'public' ORDER BY table_name, ordinal_position")
        indexes = await conn.fetch("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
                                   " ORDER BY indexname")
    finally:
        await conn.close()
    return [tuple(r) for r in columns] + [tuple(r) for r in indexes]


async def test_a_postgresql_database_made_before_the_shared_schema() -> None:
    old, new = await create_database(), await create_database()
    try:
        conn = await asyncpg.connect(old)
        try:
            await conn.execute(POSTGRESQL_DDL_BEFORE_SHARING)
        finally:
            await conn.close()
        store = open_store(new)
        await store.open()
        await store.close()
        catalog = await postgresql_catalog(old)
        assert catalog and set(catalog) < set(await postgresql_catalog(new))
        store = open_store(old)
        await store.open()
        try:
            await works(store)
        finally:
            await store.close()
        assert await postgresql_catalog(old) == await postgresql_catalog(new)
    finally:
        await drop_database(old)
        await drop_database(new)
