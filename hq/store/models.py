"""Plain records the store hands out."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


# Both backends' query for the connect path: an agent and one of its sessions.
AGENT_AND_SESSION = """
    SELECT a.codename, a.role, a.enabled, a.created, a.password_hash, s.sid, s.codename_key,
           s.created AS session_created, s.revoked_reason
    FROM agents a LEFT JOIN sessions s ON s.sid = {p1} WHERE a.codename_key = {p2}"""


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
    """One login: every access and refresh token issued from it carries its ``sid``."""

    sid: str
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
    sid: str | None
    reason: str


class RefreshOutcome(Enum):
    ROTATED = "rotated"
    REUSED = "reused"
    EXPIRED = "expired"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class RefreshResult:
    """What rotating a refresh token did; ``sid`` and ``codename`` are set unless UNKNOWN."""

    outcome: RefreshOutcome
    sid: str | None = None
    codename: str | None = None
