"""The values the client hands its caller: a channel message and the logged-in agent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Message:
    """One stored channel message: ``id`` grows by one per channel, ``ts`` is ISO 8601 UTC."""

    id: int
    channel: str
    sender: str
    text: str
    ts: str

    @classmethod
    def from_wire(cls, data: Any) -> "Message | None":
        """Parse HQ's ``{"id","channel","from","text","ts"}``; ``None`` when the shape is wrong."""
        if not isinstance(data, dict):
            return None
        id_ = data.get("id")
        fields = [data.get(key) for key in ("channel", "from", "text", "ts")]
        strings = [value for value in fields if isinstance(value, str)]
        if type(id_) is not int or len(strings) != len(fields):
            return None
        channel, sender, text, ts = strings
        return cls(id_, channel, sender, text, ts)

    def to_wire(self) -> dict[str, Any]:
        """The contract's shape (``from`` rather than ``sender``)."""
        return {"id": self.id, "channel": self.channel, "from": self.sender, "text": self.text, "ts": self.ts}


@dataclass(frozen=True)
class Agent:
    """Who the client is logged in as: the stored codename and role."""

    codename: str
    role: str
