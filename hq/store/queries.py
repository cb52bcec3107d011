"""Every statement both backends run, written once and rendered for one :class:`~hq.store.dialect.Dialect`.

Arguments are passed in the order of the numbered parameters, the same on both backends. What only
one backend does (SQLite's multi-row message insert, PostgreSQL's ``channels`` counter) stays in it.
"""

from __future__ import annotations

from typing import NamedTuple

from ..vocab import KEY_IDENTITY_PREFIX
from .dialect import Dialect
from .rules import IssueToken, RecordSuccessor, RevokeSession, RotationWrite, SpendToken


class Statement(NamedTuple):
    """One SQL statement with its arguments."""

    sql: str
    args: tuple[object, ...]


class Queries:
    """The store's shared SQL in one database's spelling."""

    def __init__(self, dialect: Dialect) -> None:
        sql = dialect.render
        # agents
        self.insert_agent = sql("INSERT INTO agents (codename, codename_key, role, password_hash, enabled, created)"
                                " VALUES ({p1}, {p2}, {p3}, {p4}, {true}, {p5})")
        self.agent = sql("SELECT * FROM agents WHERE codename_key = {p1}")
        self.agents = "SELECT * FROM agents ORDER BY created, codename_key"
        self.count_agents = "SELECT COUNT(*) AS n FROM agents"
        self.set_password = sql("UPDATE agents SET password_hash = {p1} WHERE codename_key = {p2} RETURNING *")
        self.set_enabled = sql("UPDATE agents SET enabled = {p1} WHERE codename_key = {p2} RETURNING *")
        self.set_role = sql("UPDATE agents SET role = {p1} WHERE codename_key = {p2} RETURNING *")
        # sessions and the revocation feed
        self.insert_session = sql("INSERT INTO sessions (sid, codename_key, created) VALUES ({p1}, {p2}, {p3})")
        self.session = sql("SELECT * FROM sessions WHERE sid = {p1}")
        # The connect path: an agent and one of its sessions.
        self.agent_and_session = sql(
            "SELECT a.codename, a.role, a.enabled, a.created, a.password_hash, s.sid, s.codename_key,"
            " s.created AS session_created, s.revoked_reason"
            " FROM agents a LEFT JOIN sessions s ON s.sid = {p1} WHERE a.codename_key = {p2}")
        self._revoke_session = sql("UPDATE sessions SET revoked_reason = {p1} WHERE sid = {p2}"
                                   " AND revoked_reason IS NULL RETURNING sid")
        self._revoke_agent_sessions = sql("UPDATE sessions SET revoked_reason = {p1} WHERE codename_key = {p2}"
                                          " AND revoked_reason IS NULL RETURNING sid")
        self._insert_revocation = sql("INSERT INTO revocations (codename, sid, reason) VALUES ({p1}, {p2}, {p3})")
        self.revocations_after = sql("SELECT * FROM revocations WHERE id > {p1} ORDER BY id")
        self.last_revocation_id = "SELECT COALESCE(MAX(id), 0) AS n FROM revocations"
        # the directors' API
        self.last_logins = "SELECT codename_key, MAX(created) AS last FROM sessions GROUP BY codename_key"
        # Unrevoked sessions with an unspent, unexpired refresh token (driven from the partial index
        # refresh_tokens_unspent; a session has one such token at a time).
        self.live_sessions = sql(
            "SELECT DISTINCT s.sid, s.codename_key, s.created, s.revoked_reason FROM refresh_tokens r"
            " JOIN sessions s ON s.sid = r.sid"
            " WHERE r.used_at IS NULL AND r.expires_at > {p1} AND s.revoked_reason IS NULL")
        self.codenames_with_mfa = sql("SELECT codename_key FROM mfa_factors WHERE confirmed = {true}")
        # refresh tokens; the rotation's reads lock what they return where the database needs it
        self.insert_refresh_token = sql(
            "INSERT INTO refresh_tokens (token_hash, sid, expires_at) VALUES ({p1}, {p2}, {p3})")
        self.presented_token = sql(
            "SELECT r.sid, r.expires_at, r.used_at, s.codename_key, s.revoked_reason FROM refresh_tokens r"
            " JOIN sessions s ON s.sid = r.sid WHERE r.token_hash = {p1}") + dialect.for_update("r")
        self.successor = sql(
            "SELECT r.token_hash, r.used_at FROM refresh_successors c"
            " JOIN refresh_tokens r ON r.token_hash = c.child_hash WHERE c.parent_hash = {p1}") + dialect.for_update("r")
        self._spend_token = sql("UPDATE refresh_tokens SET used_at = {p1} WHERE token_hash = {p2}")
        self._insert_successor = sql("INSERT INTO refresh_successors (parent_hash, child_hash) VALUES ({p1}, {p2})")
        self._replace_successor = sql("UPDATE refresh_successors SET child_hash = {p2} WHERE parent_hash = {p1}")
        # messages
        self.insert_message = sql(
            "INSERT INTO messages (channel, id, sender, text, ts) VALUES ({p1}, {p2}, {p3}, {p4}, {p5})")
        self.last_message_id = sql("SELECT COALESCE(MAX(id), 0) AS n FROM messages WHERE channel = {p1}")
        self.latest_messages = sql("SELECT * FROM (SELECT * FROM messages WHERE channel = {p1}"
                                   " ORDER BY id DESC LIMIT {p2}) m ORDER BY id")
        self.messages_after = sql("SELECT * FROM messages WHERE channel = {p1} AND id > {p2} ORDER BY id LIMIT {p3}")
        # second factors: each change is one conditional statement (or one transaction), so two
        # nodes racing on one agent cannot both win
        self.mfa = sql(
            "SELECT f.codename_key, f.secret_box, f.confirmed, f.last_step,"
            " (SELECT COUNT(*) FROM mfa_recovery_codes r WHERE r.codename_key = f.codename_key"
            " AND r.used_at IS NULL) AS codes_left"
            " FROM mfa_factors f WHERE f.codename_key = {p1}")
        self.begin_mfa = sql(
            "INSERT INTO mfa_factors (codename_key, secret_box, confirmed, last_step, created)"
            " VALUES ({p1}, {p2}, {false}, NULL, {p3}) ON CONFLICT (codename_key) DO UPDATE"
            " SET secret_box = excluded.secret_box, created = excluded.created"
            " WHERE mfa_factors.confirmed = {false} RETURNING codename_key")
        self.confirm_mfa = sql(
            "UPDATE mfa_factors SET confirmed = {true}, last_step = {p1} WHERE codename_key = {p2}"
            " AND confirmed = {false} AND secret_box = {p3} RETURNING codename_key")
        self.delete_recovery_codes = sql("DELETE FROM mfa_recovery_codes WHERE codename_key = {p1}")
        self.insert_recovery_code = sql("INSERT INTO mfa_recovery_codes (codename_key, code_hash) VALUES ({p1}, {p2})")
        self.use_totp_step = sql(
            "UPDATE mfa_factors SET last_step = {p1} WHERE codename_key = {p2} AND confirmed = {true}"
            " AND (last_step IS NULL OR last_step < {p1}) RETURNING codename_key")
        self.use_recovery_code = sql(
            "UPDATE mfa_recovery_codes SET used_at = {p1} WHERE codename_key = {p2} AND code_hash = {p3}"
            " AND used_at IS NULL AND EXISTS (SELECT 1 FROM mfa_factors f"
            " WHERE f.codename_key = mfa_recovery_codes.codename_key AND f.confirmed = {true}) RETURNING code_hash")
        self.delete_mfa = sql("DELETE FROM mfa_factors WHERE codename_key = {p1} RETURNING codename_key")
        # service keys (hq/auth/service_keys.py); a revocation is also a revocation feed entry
        self.insert_service_key = sql(
            "INSERT INTO service_keys (key_id, name, name_key, role, key_hash, created)"
            " VALUES ({p1}, {p2}, {p3}, {p4}, {p5}, {p6})")
        self.service_keys = "SELECT * FROM service_keys WHERE revoked IS NULL ORDER BY created, name_key"
        self.service_key_by_hash = sql("SELECT * FROM service_keys WHERE key_hash = {p1}")
        self._revoke_service_key = sql("UPDATE service_keys SET revoked = {p1} WHERE name_key = {p2}"
                                       " AND revoked IS NULL RETURNING *")
        # Never moves last_used backwards: two nodes may write one key's times in either order.
        self.touch_service_key = sql("UPDATE service_keys SET last_used = {p1} WHERE key_id = {p2}"
                                     " AND (last_used IS NULL OR last_used < {p1})")
        # pruning (the rules and their reasons: hq/store/pruning.py)
        self.last_prune_run = "SELECT MAX(at) AS at FROM prune_runs"
        self.record_prune_run = sql(
            "INSERT INTO prune_runs (at, revocation_id) SELECT {p1}, COALESCE(MAX(id), 0) FROM revocations")
        # Up to the feed's newest id as of the newest run at least the retention old; never the newest entry.
        self.prune_revocations = sql(
            "DELETE FROM revocations WHERE id <= (SELECT COALESCE(MAX(revocation_id), 0) FROM prune_runs"
            " WHERE at <= {p1}) AND id < (SELECT MAX(id) FROM revocations)")
        # Runs older than the one prune_revocations went by are of no further use.
        self.prune_runs = sql("DELETE FROM prune_runs WHERE at < (SELECT MAX(at) FROM prune_runs WHERE at <= {p1})")
        # Opened before {p1}, not the agent's newest, no token issued after {p2} (its expiry minus
        # refresh_ttl), and, unless revoked, no refresh token expired after {p3}.
        self.prune_sessions = sql(
            "DELETE FROM sessions WHERE created < {p1}"
            " AND EXISTS (SELECT 1 FROM sessions n WHERE n.codename_key = sessions.codename_key"
            " AND (n.created > sessions.created OR (n.created = sessions.created AND n.sid > sessions.sid)))"
            " AND NOT EXISTS (SELECT 1 FROM refresh_tokens r WHERE r.sid = sessions.sid AND (r.expires_at > {p2}"
            " OR (sessions.revoked_reason IS NULL AND r.expires_at > {p3})))")
        self.prune_refresh_tokens = sql(
            "DELETE FROM refresh_tokens WHERE expires_at <= {p1}"
            " OR NOT EXISTS (SELECT 1 FROM sessions s WHERE s.sid = refresh_tokens.sid)")
        self.prune_refresh_successors = sql(
            "DELETE FROM refresh_successors WHERE NOT EXISTS (SELECT 1 FROM refresh_tokens r"
            " WHERE r.token_hash = refresh_successors.parent_hash AND r.used_at > {p1})")

    def revocation(self, codename: str, reason: str, session_id: str | None) -> tuple[Statement, Statement]:
        """Revoke one session (``session_id``) or every session of the agent: the UPDATE, which returns
        the ids it revoked, and the revocation feed's new entry."""
        key = codename.lower()
        if session_id:
            revoke = Statement(self._revoke_session, (reason, session_id))
        else:
            revoke = Statement(self._revoke_agent_sessions, (reason, key))
        return revoke, Statement(self._insert_revocation, (key, session_id, reason))

    def service_key_revocation(self, name: str, revoked_at: str) -> Statement:
        """Mark the live key named ``name`` (any case) revoked; returns its row, or none."""
        return Statement(self._revoke_service_key, (revoked_at, name.lower()))

    def service_key_feed_entry(self, name: str, key_id: str) -> Statement:
        """The revocation feed's entry for a revoked key: its identity ``key:NAME`` and its id in the
        place of a session id, so that every node ends exactly that key's sockets."""
        return Statement(self._insert_revocation, (KEY_IDENTITY_PREFIX + name.lower(), key_id, "revoked"))

    def rotation_write(self, write: RotationWrite) -> tuple[Statement, ...]:
        """The statements that carry out one write of a rotation decision (hq/store/rules.py)."""
        match write:
            case SpendToken(token_hash, at):
                return (Statement(self._spend_token, (at, token_hash)),)
            case IssueToken(token_hash, session_id, expires_at):
                return (Statement(self.insert_refresh_token, (token_hash, session_id, expires_at)),)
            case RecordSuccessor(parent_hash, child_hash, replaces_earlier):
                sql = self._replace_successor if replaces_earlier else self._insert_successor
                return (Statement(sql, (parent_hash, child_hash)),)
            case RevokeSession(session_id, codename, reason):
                return self.revocation(codename, reason, session_id)
        raise TypeError(f"not a rotation write: {write!r}")
