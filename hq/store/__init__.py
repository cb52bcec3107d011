"""Agents, sessions, refresh tokens, revocations and messages behind one interface."""

from __future__ import annotations

from pathlib import Path

from .base import AgentExistsError, ServiceKeyExistsError, Store, StoreUnavailable, UnknownAgentError
from .models import (Agent, LoginSession, Message, MfaRecord, RefreshOutcome, RefreshResult, Revocation,
                     ServiceKey)

__all__ = ["Agent", "AgentExistsError", "LoginSession", "Message", "MfaRecord", "RefreshOutcome", "RefreshResult",
           "Revocation", "ServiceKey", "ServiceKeyExistsError", "Store", "StoreUnavailable", "UnknownAgentError",
           "open_store"]


def open_store(url: str) -> Store:
    """The store for a ``sqlite:///path`` or ``postgresql://`` URL (not yet opened)."""
    if url.startswith("sqlite:///"):
        from .sqlite import SQLiteStore
        return SQLiteStore(Path(url.removeprefix("sqlite:///")))
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore
        return PostgresStore(url)
    raise ValueError(f"unsupported storage url scheme: {url.split(':', 1)[0]}")
