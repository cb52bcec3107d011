"""Cluster delivery in id order: each channel's messages reach this node's members once, in id order,
whichever node stored them, and nothing acknowledged is silently missed while Redis is away.

Message ids come from the shared database; the Redis broadcasts of two nodes race, so node B may
hear id 6 (stored on B) before id 5 (stored on A). And while Redis is down, broadcasts from other
nodes never arrive. :class:`ChannelSequencer` sits where a node delivers a channel message to its
members and keeps, per channel, the next id it owes them:

- the next id is delivered at once, then any later ids it was holding;
- an id already delivered (a duplicate) is dropped;
- a later id is held, and if the gap is not filled within ``gap_wait`` the missing messages are
  read from the store and delivered first;
- every ``catch_up`` seconds the store's last id of each channel is compared with what was
  delivered, so messages that never came through Redis (an outage, a node that died between its
  commit and its publish) are delivered from the store, in order, within about a second.

Only used in a cluster (one node delivers its own messages in order already).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from ..cluster.redis import Outage
from ..store import Store
from ..tasks import BackgroundTasks

log = logging.getLogger(__name__)

Deliver = Callable[[dict[str, Any], Any], Awaitable[None]]


@dataclass
class _Channel:
    next_id: int | None = None
    held: dict[int, tuple[dict[str, Any], Any]] = field(default_factory=dict)
    filling: asyncio.TimerHandle | None = None


class ChannelSequencer:
    """Per channel, delivers message ids in order, once, filling gaps from the store.

    A gap's fill runs in ``tasks`` (the process's :class:`~hq.tasks.BackgroundTasks`, ended at shutdown).
    """

    def __init__(self, store: Store, deliver: Deliver, gap_wait: float = 0.05, catch_up: float = 1.0,
                 tasks: BackgroundTasks | None = None) -> None:
        self._tasks = tasks if tasks is not None else BackgroundTasks()
        self._store = store
        self._deliver = deliver
        self._gap_wait = gap_wait
        self._catch_up = catch_up
        self._channels: dict[str, _Channel] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._store_outage = Outage(log, f"catch-up from the store failed (%s); retrying every {catch_up:.1f} s",
                                    "catch-up from the store works again")

    def joined(self, channel: str, last_id: int) -> None:
        """A member of this node joined ``channel`` when its last stored id was ``last_id``."""
        state = self._channels.setdefault(channel, _Channel())
        if state.next_id is None:
            state.next_id = last_id + 1

    async def offer(self, message: dict[str, Any], skip_sid: Any = None) -> None:
        """A stored message to deliver to this node's members of its channel (from any node)."""
        channel, message_id = message["channel"], message["id"]
        state = self._channels.setdefault(channel, _Channel())
        if state.next_id is None:
            state.next_id = message_id
        if message_id < state.next_id or message_id in state.held:
            return
        if message_id > state.next_id:
            state.held[message_id] = (message, skip_sid)
            if state.filling is None:
                state.filling = asyncio.get_running_loop().call_later(self._gap_wait, self._fill_soon, channel)
            return
        await self._deliver(message, skip_sid)
        state.next_id = message_id + 1
        await self._release(state)

    async def _release(self, state: _Channel) -> None:
        """Deliver what was held and is now next."""
        assert state.next_id is not None
        while state.next_id in state.held:
            message, skip_sid = state.held.pop(state.next_id)
            await self._deliver(message, skip_sid)
            state.next_id += 1
        if not state.held and state.filling is not None:
            state.filling.cancel()
            state.filling = None

    def _fill_soon(self, channel: str) -> None:
        state = self._channels.get(channel)
        if state is not None:
            state.filling = None
            self._tasks.spawn(self.fill(channel), name=f"fill-{channel}")

    async def fill(self, channel: str, up_to: int | None = None) -> None:
        """Deliver, from the store, the messages of ``channel`` this node still owes its members."""
        async with self._lock:
            state = self._channels.get(channel)
            if state is None or state.next_id is None:
                return
            target = up_to if up_to is not None else (max(state.held) if state.held else state.next_id - 1)
            while state.next_id <= target:
                try:
                    missing = await self._store.history(channel, state.next_id - 1, 500)
                except Exception as exc:  # the store is down: the next catch-up round tries again
                    self._store_outage.failed(exc)
                    return
                self._store_outage.answered()
                if not missing:
                    break
                for stored in missing:
                    if stored.id < state.next_id:
                        continue
                    if stored.id > state.next_id:
                        break  # (ids grow by one per channel; a hole would be a store bug)
                    held = state.held.pop(stored.id, None)
                    await self._deliver(held[0] if held else stored.to_wire(), held[1] if held else None)
                    state.next_id = stored.id + 1
                await self._release(state)
                if len(missing) < 500:
                    break

    async def _catch_up_forever(self) -> None:
        while True:
            await asyncio.sleep(self._catch_up)
            for channel, state in list(self._channels.items()):
                if state.next_id is None:
                    continue
                try:
                    last = await self._store.last_message_id(channel)
                except Exception as exc:
                    self._store_outage.failed(exc)
                    break
                self._store_outage.answered()
                if last >= state.next_id:
                    await self.fill(channel, up_to=last)

    def start(self) -> None:
        """Start the catch-up rounds (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._catch_up_forever(), name="channel-catch-up")

    async def stop(self) -> None:
        """Stop the catch-up rounds."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
