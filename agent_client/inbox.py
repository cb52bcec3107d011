"""The caller's inbox: an ``asyncio.Queue`` of messages that ends with the client.

``async for message in client`` reads from here. When the client closes, the iteration ends after
the messages already delivered; when it stops on a terminal refusal, the iteration raises that
refusal after them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from .errors import AgentClientError
from .messages import Message


@dataclass(frozen=True)
class _End:
    error: AgentClientError | None


class Inbox:
    """An unbounded FIFO of :class:`Message` closed once with an optional error."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Message | _End] = asyncio.Queue()
        self._ended = False

    def put(self, message: Message) -> None:
        """Add one delivered message (ignored once the inbox has ended)."""
        if not self._ended:
            self._queue.put_nowait(message)

    def end(self, error: AgentClientError | None = None) -> None:
        """No more messages: readers finish (``error is None``) or raise ``error``."""
        if not self._ended:
            self._ended = True
            self._queue.put_nowait(_End(error))

    def qsize(self) -> int:
        """Messages waiting to be read."""
        return self._queue.qsize()

    async def get(self) -> Message:
        """The next message; raises ``StopAsyncIteration`` or the terminal error at the end."""
        item = await self._queue.get()
        if isinstance(item, _End):
            self._queue.put_nowait(item)  # every later reader ends the same way
            if item.error is not None:
                raise item.error
            raise StopAsyncIteration
        return item
