"""Records from database rows, for both backends: an ``aiosqlite.Row`` and an ``asyncpg.Record`` are
both read by column name, and SQLite's 0/1 flags become booleans here."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Protocol

from .models import Agent, LoginSession, Message, MfaRecord, Revocation, ServiceKey
from .rules import PresentedToken, Successor


class Row(Protocol):
    """A result row read by column name."""

    def __getitem__(self, column: str) -> Any: ...


def now_iso() -> str:
    """The current UTC time as stored in ``created`` columns (ISO 8601, seconds, ``Z``)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def agent(row: Row | None) -> Agent | None:
    """An ``agents`` row (or the agent half of the connect path's join)."""
    if row is None:
        return None
    return Agent(codename=row["codename"], role=row["role"], enabled=bool(row["enabled"]),
                 created=row["created"], password_hash=row["password_hash"])


def session(row: Row | None) -> LoginSession | None:
    """A ``sessions`` row."""
    if row is None:
        return None
    return LoginSession(row["sid"], row["codename_key"], row["created"], row["revoked_reason"])


def joined_session(row: Row | None) -> LoginSession | None:
    """The session half of the connect path's join (None when the agent has no such session)."""
    if row is None or row["sid"] is None:
        return None
    return LoginSession(row["sid"], row["codename_key"], row["session_created"], row["revoked_reason"])


def revocation(row: Row) -> Revocation:
    """A ``revocations`` feed entry."""
    return Revocation(int(row["id"]), row["codename"], row["sid"], row["reason"])


def message(row: Row) -> Message:
    """A ``messages`` row."""
    return Message(id=int(row["id"]), channel=row["channel"], sender=row["sender"], text=row["text"], ts=row["ts"])


def service_key(row: Row | None) -> ServiceKey | None:
    """A ``service_keys`` row (its hash stays behind)."""
    if row is None:
        return None
    return ServiceKey(row["key_id"], row["name"], row["role"], row["created"], row["last_used"], row["revoked"])


def mfa(row: Row | None) -> MfaRecord | None:
    """An ``mfa_factors`` row with its count of unspent recovery codes."""
    if row is None:
        return None
    last_step = row["last_step"]
    return MfaRecord(row["codename_key"], row["secret_box"], bool(row["confirmed"]),
                     None if last_step is None else int(last_step), int(row["codes_left"]))


def presented_token(row: Row | None) -> PresentedToken | None:
    """A refresh token with its session, as the rotation rule reads it."""
    if row is None:
        return None
    return PresentedToken(row["sid"], row["codename_key"], row["expires_at"], row["used_at"],
                          session_revoked=row["revoked_reason"] is not None)


def successor(row: Row | None) -> Successor | None:
    """The token a rotation issued."""
    if row is None:
        return None
    return Successor(row["token_hash"], row["used_at"])
