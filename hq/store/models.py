"""Plain records the store hands out."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


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


@dataclass(frozen=True)
class ServiceKey:
    """A service key as stored: never the key itself, only the hash it is found by (which never
    leaves the store). ``key_id`` identifies it in the revocation feed and indexes its sockets."""

    key_id: str
    name: str
    role: str
    created: str
    last_used: str | None
    revoked: str | None

    def to_wire(self) -> dict[str, object]:
        """The directors' API row: ``{"name", "role", "created", "last_used"}``."""
        return {"name": self.name, "role": self.role, "created": self.created, "last_used": self.last_used}


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
