"""The refresh-token rotation rule (hq/store/rules.py), decided in-process: every outcome and every edge.

The backends only read rows and apply these writes; tests/test_store.py and tests/test_refresh_grace.py
check that they do so on a real SQLite file and a real PostgreSQL database.
"""

from __future__ import annotations

import pytest

from hq.store import RefreshOutcome, RefreshResult
from hq.store.dialect import POSTGRESQL, SQLITE, Dialect
from hq.store.queries import Queries
from hq.store.rules import (IssueToken, PresentedToken, RecordSuccessor, RevokeSession, Rotation, RotationRequest,
                            SpendToken, Successor, decide_rotation, in_grace_window)

NOW = 1_000_000.0
GRACE = 5.0
LATER = NOW + 3600  # the new token's expiry
REQUEST = RotationRequest("old", "new", LATER, NOW, GRACE)


def token(*, used_at: float | None = None, expires_at: float = NOW + 60, revoked: bool = False) -> PresentedToken:
    return PresentedToken("s1", "viper", expires_at, used_at, session_revoked=revoked)


def outcome(outcome: RefreshOutcome) -> RefreshResult:
    return RefreshResult(outcome, "s1", "viper")


ROTATED = Rotation(outcome(RefreshOutcome.ROTATED), (
    SpendToken("old", NOW), IssueToken("new", "s1", LATER), RecordSuccessor("old", "new", replaces_earlier=False)))
GRACE_RETRY = Rotation(outcome(RefreshOutcome.GRACE), (
    SpendToken("child", NOW), IssueToken("new", "s1", LATER), RecordSuccessor("old", "new", replaces_earlier=True)))
REUSED = Rotation(outcome(RefreshOutcome.REUSED), (RevokeSession("s1", "viper", "revoked"),))
UNSPENT_CHILD = Successor("child", None)


def test_an_unknown_token_is_unknown_and_writes_nothing() -> None:
    assert decide_rotation(None, None, REQUEST) == Rotation(RefreshResult(RefreshOutcome.UNKNOWN))


def test_an_unspent_live_token_rotates_into_its_child() -> None:
    assert decide_rotation(token(), None, REQUEST) == ROTATED


def test_an_unspent_token_of_a_revoked_session_is_unknown_and_writes_nothing() -> None:
    assert decide_rotation(token(revoked=True), None, REQUEST) == Rotation(outcome(RefreshOutcome.UNKNOWN))


@pytest.mark.parametrize("expires_at", [NOW, NOW - 1])
def test_an_unspent_token_at_or_past_its_expiry_is_expired_and_writes_nothing(expires_at: float) -> None:
    assert decide_rotation(token(expires_at=expires_at), None, REQUEST) == Rotation(outcome(RefreshOutcome.EXPIRED))


@pytest.mark.parametrize("spent_ago", [0.0, 1.0, GRACE])
def test_a_retry_within_the_window_with_an_unspent_child_replaces_the_child(spent_ago: float) -> None:
    assert decide_rotation(token(used_at=NOW - spent_ago), UNSPENT_CHILD, REQUEST) == GRACE_RETRY


def test_a_retry_just_past_the_window_is_reuse() -> None:
    assert decide_rotation(token(used_at=NOW - GRACE - 0.001), UNSPENT_CHILD, REQUEST) == REUSED


def test_with_grace_zero_every_second_use_is_reuse() -> None:
    zero = RotationRequest("old", "new", LATER, NOW, 0.0)
    assert decide_rotation(token(used_at=NOW), UNSPENT_CHILD, zero) == REUSED


def test_a_retry_once_the_child_was_spent_is_reuse() -> None:
    assert decide_rotation(token(used_at=NOW - 1), Successor("child", NOW - 0.5), REQUEST) == REUSED


def test_a_spent_token_without_a_recorded_child_is_reuse() -> None:
    # Tokens rotated before refresh_successors existed have no child on record.
    assert decide_rotation(token(used_at=NOW - 1), None, REQUEST) == REUSED


def test_a_retry_in_a_revoked_session_is_reuse_and_revokes_again() -> None:
    assert decide_rotation(token(used_at=NOW - 1, revoked=True), UNSPENT_CHILD, REQUEST) == REUSED


@pytest.mark.parametrize("expires_at", [NOW, NOW - 1])
def test_a_retry_of_an_expired_token_is_reuse(expires_at: float) -> None:
    assert decide_rotation(token(used_at=NOW - 1, expires_at=expires_at), UNSPENT_CHILD, REQUEST) == REUSED


def test_the_window_is_measured_from_the_first_rotation() -> None:
    # A grace retry leaves the parent's used_at alone, so a later retry is judged against it.
    assert in_grace_window(NOW - GRACE, NOW, GRACE)
    assert not in_grace_window(NOW - GRACE, NOW + 0.001, GRACE)
    assert not in_grace_window(NOW, NOW, 0.0)


def test_every_outcome_is_covered() -> None:
    # If RefreshOutcome gains a member, the table above needs a row for it.
    assert set(RefreshOutcome) == {RefreshOutcome.ROTATED, RefreshOutcome.GRACE, RefreshOutcome.REUSED,
                                   RefreshOutcome.EXPIRED, RefreshOutcome.UNKNOWN}


# the writes, as each backend spells them ----------------------------------------------------------
@pytest.mark.parametrize("dialect", [SQLITE, POSTGRESQL])
def test_each_write_becomes_statements_with_arguments_in_parameter_order(dialect: Dialect) -> None:
    sql = Queries(dialect)
    p1, p2, p3 = (dialect.render(f"{{p{n}}}") for n in (1, 2, 3))
    spend, = sql.rotation_write(SpendToken("child", NOW))
    assert spend.sql == f"UPDATE refresh_tokens SET used_at = {p1} WHERE token_hash = {p2}"
    assert spend.args == (NOW, "child")
    issue, = sql.rotation_write(IssueToken("new", "s1", LATER))
    assert issue.sql == f"INSERT INTO refresh_tokens (token_hash, sid, expires_at) VALUES ({p1}, {p2}, {p3})"
    assert issue.args == ("new", "s1", LATER)
    link, = sql.rotation_write(RecordSuccessor("old", "new", replaces_earlier=False))
    assert (link.sql.startswith("INSERT INTO refresh_successors"), link.args) == (True, ("old", "new"))
    relink, = sql.rotation_write(RecordSuccessor("old", "new", replaces_earlier=True))
    assert relink.sql == f"UPDATE refresh_successors SET child_hash = {p2} WHERE parent_hash = {p1}"
    assert relink.args == ("old", "new")
    revoke, record = sql.rotation_write(RevokeSession("s1", "viper", "revoked"))
    assert revoke.sql.startswith("UPDATE sessions SET revoked_reason") and f"WHERE sid = {p2}" in revoke.sql
    assert revoke.args == ("revoked", "s1")
    assert record.sql.startswith("INSERT INTO revocations") and record.args == ("viper", "s1", "revoked")


def test_only_postgresql_locks_what_rotation_reads() -> None:
    assert Queries(POSTGRESQL).presented_token.endswith(" FOR UPDATE OF r")
    assert Queries(POSTGRESQL).successor.endswith(" FOR UPDATE OF r")
    assert "FOR UPDATE" not in Queries(SQLITE).presented_token + Queries(SQLITE).successor


def test_parameters_are_numbered_in_both_dialects() -> None:
    template = "x = {p1} AND y = {p2} AND z = {p1} AND f = {true}"
    assert SQLITE.render(template) == "x = ?1 AND y = ?2 AND z = ?1 AND f = 1"
    assert POSTGRESQL.render(template) == "x = $1 AND y = $2 AND z = $1 AND f = TRUE"
