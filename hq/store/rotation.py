"""Rotating a refresh token inside a backend's transaction: read the rows, decide (hq/store/rules.py), write.

Each backend opens its own transaction (SQLite's ``BEGIN IMMEDIATE`` under its lock, PostgreSQL's
``conn.transaction()`` with locking reads) and hands this its way to run one statement.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from . import rows
from .models import RefreshResult
from .queries import Queries
from .rules import RotationRequest, decide_rotation

#: Runs one statement in the open transaction and returns its first row (None if it has none).
RunStatement = Callable[[str, tuple[object, ...]], Awaitable[rows.Row | None]]


async def rotate_in_transaction(sql: Queries, run: RunStatement, request: RotationRequest) -> RefreshResult:
    """Apply the rotation rule to ``request.old_hash``; the caller commits (or rolls back) around it."""
    token = rows.presented_token(await run(sql.presented_token, (request.old_hash,)))
    successor = None
    if token is not None and token.used_at is not None:  # only a spent token's child matters
        successor = rows.successor(await run(sql.successor, (request.old_hash,)))
    rotation = decide_rotation(token, successor, request)
    for write in rotation.writes:
        for statement in sql.rotation_write(write):
            await run(statement.sql, statement.args)
    return rotation.result
