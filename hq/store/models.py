"""Plain records the store hands out."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


# Both backends' query for the connect path: an agent and one of its sessions.
AGENT_AND_SESSION = """
    SELECT a.codename, a.role, a.enabled, a.created, a.password_hash, s.sid, s.codename_key,
           s.created AS session_created, s.revoked_reason
    FROM agents a LEFT JOIN sessions s ON s.sid = {p1} WHERE a.codename_key = {p2}"""

# Both backends' query for rotation: a refresh token with its session.
REFRESH_TOKEN_AND_SESSION = """
    SELECT r.sid, r.expires_at, r.used_at, s.codename_key, s.revoked_reason FROM refresh_tokens r
    JOIN sessions s ON s.sid = r.sid WHERE r.token_hash = {p1}"""

# Both backends' live sessions for the directors' API: unrevoked, with an unspent, unexpired refresh
# token (driven from the partial index refresh_tokens_unspent; a session has one such token at a time).
LIVE_SESSIONS = """
    SELECT DISTINCT s.sid, s.codename_key, s.created, s.revoked_reason FROM refresh_tokens r
    JOIN sessions s ON s.sid = r.sid
    WHERE r.used_at IS NULL AND r.expires_at > {p1} AND s.revoked_reason IS NULL"""

# Both backends' grace retry, step one: spend the child that rotating {p2} issued, if it is still
# unspent (a spent child means the reply did arrive, so the retry is reuse). The condition is in the
# UPDATE itself so that on PostgreSQL a concurrent rotation of the child is waited for and re-checked.
SUPERSEDE_CHILD = """
    UPDATE refresh_tokens SET used_at = {p1} WHERE used_at IS NULL
    AND token_hash = (SELECT child_hash FROM refresh_successors WHERE parent_hash = {p2})
    RETURNING token_hash"""


@dataclass(frozen=True)
class Agent:
    """A registered agent. ``password_hash`` never leaves the server."""

    codename: str
    role: str
    enabled: bool
    created: str
    password_hash: str


@dataclass(frozen=True)
class LoginSession:
    """One login: every access and refresh token issued from it carries its id (the token claim ``sid``)."""

    session_id: str
    codename: str
    created: str
    revoked_reason: str | None

    @property
    def revoked(self) -> bool:
        return self.revoked_reason is not None


@dataclass(frozen=True)
class Message:
    """A stored channel message, in the shape clients receive."""

    id: int
    channel: str
    sender: str
    text: str
    ts: str

    def to_wire(self) -> dict[str, object]:
        """The contract's ``message`` payload."""
        return {"id": self.id, "channel": self.channel, "from": self.sender, "text": self.text, "ts": self.ts}


@dataclass(frozen=True)
class Revocation:
    """An entry of the revocation feed every HQ node follows."""

    id: int
    codename: str
    session_id: str | None
    reason: str


class RefreshOutcome(Enum):
    """What presenting a refresh token led to."""

    #: An unspent token was spent and a new one stored.
    ROTATED = "rotated"
    #: The token just rotated came back within the grace window while its child was still unspent
    #: (a retry after a lost reply): a new child was stored and the previous child was spent, so
    #: the session keeps exactly one live refresh token.
    GRACE = "grace"
    #: A spent token came back outside the grace rules: the whole session was revoked.
    REUSED = "reused"
    EXPIRED = "expired"
    UNKNOWN = "unknown"


def in_grace_window(used_at: float, now: float, grace: float) -> bool:
    """Whether a refresh token spent at ``used_at`` may be retried at ``now``; ``grace`` 0 means never."""
    return grace > 0 and now - used_at <= grace


@dataclass(frozen=True)
class RefreshResult:
    """What rotating a refresh token did; ``session_id`` and ``codename`` are set unless UNKNOWN."""

    outcome: RefreshOutcome
    session_id: str | None = None
    codename: str | None = None

    @property
    def issued(self) -> bool:
        """Whether a new refresh token was stored (a normal rotation or a grace retry)."""
        return self.outcome in (RefreshOutcome.ROTATED, RefreshOutcome.GRACE)


# Both backends' query for an agent's second factor and how many recovery codes it has left.
MFA_RECORD = """
    SELECT f.codename_key, f.secret_box, f.confirmed, f.last_step,
           (SELECT COUNT(*) FROM mfa_recovery_codes r WHERE r.codename_key = f.codename_key
            AND r.used_at IS NULL) AS codes_left
    FROM mfa_factors f WHERE f.codename_key = {p1}"""


@dataclass(frozen=True)
class MfaRecord:
    """An agent's TOTP enrolment (see :mod:`hq.auth.mfa`): the secret only ever sealed, whether the
    agent has confirmed it with a code, the last time step a code was accepted for, and how many
    recovery codes are left unspent."""

    codename: str
    secret_box: str
    confirmed: bool
    last_step: int | None
    recovery_codes_left: int
