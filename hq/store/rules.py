"""The refresh-token rotation rule, decided once for every backend (security-critical).

:func:`decide_rotation` is pure: given the presented token as the backend read it (with its session),
the token its last rotation issued, and the request, it says what the outcome is and what to write.
Each backend reads those rows inside its own transaction — locking them, where the database needs
that, so the decision cannot be overtaken — then applies the writes in that same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from .models import RefreshOutcome, RefreshResult

#: The revocation reason a reused refresh token records (what ``session_ended`` then says).
REUSE_REASON = "revoked"


def in_grace_window(used_at: float, now: float, grace: float) -> bool:
    """Whether a refresh token spent at ``used_at`` may be retried at ``now``; ``grace`` 0 means never."""
    return grace > 0 and now - used_at <= grace


@dataclass(frozen=True)
class PresentedToken:
    """The stored refresh token whose hash was presented, with the state of its login session."""

    session_id: str
    #: The agent's lower-case codename.
    codename: str
    expires_at: float
    #: When it was spent (rotated); None while unspent.
    used_at: float | None
    session_revoked: bool


@dataclass(frozen=True)
class Successor:
    """The token the presented one's newest rotation (or grace retry) issued."""

    token_hash: str
    used_at: float | None


@dataclass(frozen=True)
class RotationRequest:
    """Spend ``old_hash`` and store ``new_hash`` (valid until ``new_expires_at``) at ``now``."""

    old_hash: str
    new_hash: str
    new_expires_at: float
    now: float
    #: Seconds a just-rotated token may be presented again (``[auth] refresh_grace``); 0 = never.
    grace: float = 0.0


# What a decision writes. Each backend turns these into its statements (hq/store/queries.py).
@dataclass(frozen=True)
class SpendToken:
    """Mark a refresh token spent at ``at``."""

    token_hash: str
    at: float


@dataclass(frozen=True)
class IssueToken:
    """Store a new, unspent refresh token for a session."""

    token_hash: str
    session_id: str
    expires_at: float


@dataclass(frozen=True)
class RecordSuccessor:
    """Remember that rotating ``parent_hash`` issued ``child_hash`` (replacing an earlier child)."""

    parent_hash: str
    child_hash: str
    replaces_earlier: bool


@dataclass(frozen=True)
class RevokeSession:
    """Revoke a login session and append it to the revocation feed."""

    session_id: str
    codename: str
    reason: str


RotationWrite = SpendToken | IssueToken | RecordSuccessor | RevokeSession


@dataclass(frozen=True)
class Rotation:
    """What presenting a refresh token leads to: the answer, and the writes that make it so, in order."""

    result: RefreshResult
    writes: tuple[RotationWrite, ...] = ()


def decide_rotation(token: PresentedToken | None, successor: Successor | None, request: RotationRequest) -> Rotation:
    """The outcome of presenting ``request.old_hash`` (see :meth:`hq.store.base.Store.rotate_refresh_token`).

    - unknown hash: UNKNOWN;
    - spent, within the grace window of its rotation, session live, token unexpired, and the child
      it got still unspent: GRACE — the child is spent and the new token replaces it, so the
      session keeps one live refresh token (the parent's ``used_at`` stays, so retries never
      stretch the window);
    - spent otherwise: REUSED — the session is revoked;
    - unspent but its session revoked: UNKNOWN (the token died with the session);
    - unspent but expired: EXPIRED;
    - unspent and live: ROTATED — it is spent and the new token stored as its child.
    """
    if token is None:
        return Rotation(RefreshResult(RefreshOutcome.UNKNOWN))

    def result(outcome: RefreshOutcome) -> RefreshResult:
        return RefreshResult(outcome, token.session_id, token.codename)

    now = request.now
    issue = IssueToken(request.new_hash, token.session_id, request.new_expires_at)
    if token.used_at is not None:
        if (not token.session_revoked and token.expires_at > now
                and in_grace_window(token.used_at, now, request.grace)
                and successor is not None and successor.used_at is None):
            return Rotation(result(RefreshOutcome.GRACE), (
                SpendToken(successor.token_hash, now), issue,
                RecordSuccessor(request.old_hash, request.new_hash, replaces_earlier=True)))
        return Rotation(result(RefreshOutcome.REUSED), (RevokeSession(token.session_id, token.codename, REUSE_REASON),))
    if token.session_revoked:
        return Rotation(result(RefreshOutcome.UNKNOWN))
    if token.expires_at <= now:
        return Rotation(result(RefreshOutcome.EXPIRED))
    return Rotation(result(RefreshOutcome.ROTATED), (
        SpendToken(request.old_hash, now), issue,
        RecordSuccessor(request.old_hash, request.new_hash, replaces_earlier=False)))
