"""The store's tables, written once and rendered for each database by its :class:`~hq.store.dialect.Dialect`.

Every statement is ``CREATE … IF NOT EXISTS``: opening a database made by an earlier HQ adds what it
lacks and changes nothing it has, so the names and types here must stay as they are (a new column
needs a migration; a new table does not).
"""

from __future__ import annotations

from .dialect import Dialect

_TABLES = """
CREATE TABLE IF NOT EXISTS agents (
    codename TEXT NOT NULL,
    codename_key TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    enabled {boolean} NOT NULL DEFAULT {true},
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
    expires_at {double} NOT NULL,
    used_at {double}
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
    id {serial_key},
    codename TEXT NOT NULL,
    sid TEXT,
    reason TEXT NOT NULL
);
-- Pruning (hq/store/pruning.py): each session's refresh tokens; and each pruning run, with the
-- revocation feed's newest id at that time (the feed has no time column of its own).
CREATE INDEX IF NOT EXISTS refresh_tokens_by_session ON refresh_tokens (sid);
-- Service keys for programs (hq/auth/service_keys.py): only the key's SHA-256 is stored. A revoked
-- key keeps its row, so that presenting it again is told "revoked" rather than "invalid"; a name is
-- unique regardless of case among the keys not revoked, so a revoked key's name may be used again.
CREATE TABLE IF NOT EXISTS service_keys (
    key_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    name_key TEXT NOT NULL,
    role TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    created TEXT NOT NULL,
    last_used TEXT,
    revoked TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS service_keys_live_name ON service_keys (name_key) WHERE revoked IS NULL;
CREATE TABLE IF NOT EXISTS prune_runs (
    at {double} NOT NULL,
    revocation_id {bigint} NOT NULL
);
"""

# Each channel's last message id, for databases that several nodes write (Dialect.numbers_messages_in_table).
_CHANNELS = """
CREATE TABLE IF NOT EXISTS channels (
    name TEXT PRIMARY KEY,
    last_id BIGINT NOT NULL DEFAULT 0
);
"""

_MESSAGES_AND_MFA = """
CREATE TABLE IF NOT EXISTS messages (
    channel TEXT NOT NULL,
    id {bigint} NOT NULL,
    sender TEXT NOT NULL,
    text TEXT NOT NULL,
    ts TEXT NOT NULL,
    PRIMARY KEY (channel, id)
){without_rowid};
-- Second factors (hq/auth/mfa.py): the TOTP secret sealed with HQ's MFA key, never in the clear.
CREATE TABLE IF NOT EXISTS mfa_factors (
    codename_key TEXT PRIMARY KEY,
    secret_box TEXT NOT NULL,
    confirmed {boolean} NOT NULL DEFAULT {false},
    last_step {bigint},
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS mfa_recovery_codes (
    codename_key TEXT NOT NULL,
    code_hash TEXT NOT NULL,
    used_at {double},
    PRIMARY KEY (codename_key, code_hash)
){without_rowid};
"""


def schema(dialect: Dialect) -> str:
    """The statements that create every table and index the store uses, for ``dialect``'s database."""
    channels = _CHANNELS if dialect.numbers_messages_in_table else ""
    return dialect.render(_TABLES + channels + _MESSAGES_AND_MFA)
