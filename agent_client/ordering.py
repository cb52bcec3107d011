"""Once-and-in-order delivery for one channel, from live messages and history pages alike.

HQ numbers each channel's messages 1, 2, 3, ... so the client needs no clock and no guesswork:
it remembers the last id it delivered, drops anything at or below it (a duplicate), delivers the
next id as soon as it is known, and holds anything further ahead until the gap is filled by a
``history(after_id=last)`` catch-up.
"""

from __future__ import annotations

from .messages import Message


class ChannelCursor:
    """Per-channel delivery state: the last delivered id and messages waiting behind a gap."""

    def __init__(self, channel: str, last_id: int | None = None) -> None:
        self.channel = channel
        #: The last id handed to the caller; ``None`` until the first join fixes the starting point.
        self.last_id = last_id
        self._waiting: dict[int, Message] = {}
        #: Ids HQ confirmed as stored (e.g. this client's own sends) that are not delivered yet.
        self._known_max = last_id or 0
        self.duplicates = 0

    @property
    def started(self) -> bool:
        """Whether the starting point is known (messages can flow)."""
        return self.last_id is not None

    def start(self, channel_last_id: int) -> list[Message]:
        """Fix the starting point from a join's ``last_id`` unless it is already known; return
        what can now be delivered.

        A message that arrived between entering the room and the join's answer may have an id
        at or below ``last_id``; the start moves back just before it so nothing received is lost.
        """
        if self.last_id is not None:
            return []
        start = channel_last_id
        if self._waiting:
            start = min(start, min(self._waiting) - 1)
        self.last_id = start
        self._known_max = max(self._known_max, start)
        return self._drain()

    def offer(self, message: Message) -> list[Message]:
        """Take a live or history message; return what can now be delivered, in order."""
        if self.last_id is not None and message.id <= self.last_id or message.id in self._waiting:
            self.duplicates += 1
            return []
        self._waiting[message.id] = message
        self._known_max = max(self._known_max, message.id)
        return self._drain()

    def note_stored(self, message_id: int) -> None:
        """HQ confirmed ``message_id`` exists (an own send that HQ will not echo live)."""
        self._known_max = max(self._known_max, message_id)

    @property
    def has_gap(self) -> bool:
        """Whether some known id beyond ``last_id`` is missing: a catch-up is needed."""
        return self.last_id is not None and self._known_max > self.last_id

    def _drain(self) -> list[Message]:
        if self.last_id is None:
            return []
        ready: list[Message] = []
        while self.last_id + 1 in self._waiting:
            self.last_id += 1
            ready.append(self._waiting.pop(self.last_id))
        return ready
