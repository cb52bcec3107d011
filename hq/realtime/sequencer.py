"""Cluster delivery in id order: each channel's messages reach this node's members once, in id order,
whichever node stored them, and nothing acknowledged is silently missed while Redis is away.

Message ids come from the shared database; the Redis broadcasts of two nodes race, so node B may
hear id 6 (stored on B) before id 5 (stored on A). And while Redis is down, broadcasts from other
nodes never arrive. :class:`ChannelSequencer` sits where a node delivers a channel message to its
members and keeps, per channel its members joined, the next id it owes them:

- the next id is delivered at once, then any later ids it was holding;
- an id already delivered (a duplicate) is dropped;
- a later id is held, and if the gap is not filled within ``gap_wait`` the missing messages are
  read from the store and delivered first.

The store is otherwise asked only when something says a message may have been missed (the caller
calls :meth:`ChannelSequencer.catch_up`: the fan-out does after its Redis subscription of a channel
came back) and on a slow safety round every ``catch_up`` seconds (``[cluster] catch_up_interval``,
30 s), for a message whose publication was lost with nothing stored after it (its node died between
commit and publish, say). An idle, healthy cluster asks the store nothing per second. While the
subscription is down (:meth:`ChannelSequencer.redis_lost`) the round runs every ``while_lost``
seconds instead, so that messages stored on other nodes still arrive within about a second, until
:meth:`ChannelSequencer.redis_back` (and one round ``2 * while_lost`` after it: a node that could not
publish skips publishing for up to a second after Redis returns). A read that fails (the store is down too) is retried every
``while_lost`` seconds for that channel.

Only used in a cluster (one node delivers its own messages in order already).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from ..clock import Clock, SystemClock, TimerHandle
from ..cluster.redis import Outage
from ..store import Store
from ..tasks import BackgroundTasks

log = logging.getLogger(__name__)

Deliver = Callable[[dict[str, Any], Any], Awaitable[None]]


#: Messages read from the store per query while catching up.
BATCH = 500
#: Default seconds between two safety rounds (``[cluster] catch_up_interval``).
CATCH_UP = 30.0
#: Seconds between rounds while the Redis subscription is down, and between retries of a failed read.
WHILE_LOST = 1.0


@dataclass
class _Channel:
    next_id: int | None = None
    held: dict[int, tuple[dict[str, Any], Any]] = field(default_factory=dict)
    #: A gap's fill or a failed read's retry, scheduled.
    filling: TimerHandle | None = None


class ChannelSequencer:
    """Per channel, delivers message ids in order, once, filling gaps from the store.

    A fill runs in ``tasks`` (the process's :class:`~hq.tasks.BackgroundTasks`, ended at shutdown);
    its timers and the safety round's run on ``clock`` (a :class:`~hq.clock.ManualClock` in tests).
    """

    def __init__(self, store: Store, deliver: Deliver, gap_wait: float = 0.05, catch_up: float = CATCH_UP,
                 tasks: BackgroundTasks | None = None, clock: Clock | None = None,
                 while_lost: float = WHILE_LOST) -> None:
        self._tasks = tasks if tasks is not None else BackgroundTasks()
        self._clock = clock if clock is not None else SystemClock()
        self._store = store
        self._deliver = deliver
        self._gap_wait = gap_wait
        self._catch_up = catch_up
        self._while_lost = while_lost
        self._redis_lost = False
        self._channels: dict[str, _Channel] = {}
        self._round: TimerHandle | None = None
        self._running = False
        self._lock = asyncio.Lock()
        self._store_outage = Outage(log, f"catch-up from the store failed (%s); retrying every {while_lost:g} s",
                                    "catch-up from the store works again")

    @property
    def round_interval(self) -> float:
        """Seconds between two safety rounds, as things stand."""
        return self._while_lost if self._redis_lost else self._catch_up

    def joined(self, channel: str, last_id: int) -> None:
        """A member of this node joined ``channel`` when its last stored id was ``last_id``."""
        state = self._channels.setdefault(channel, _Channel())
        if state.next_id is None:
            state.next_id = last_id + 1

    def following(self, channel: str) -> bool:
        """Whether this node owes members ``channel``'s messages (a member joined and it was not forgotten)."""
        state = self._channels.get(channel)
        return state is not None and state.next_id is not None

    def forget(self, channel: str) -> None:
        """This node's last member left ``channel``: owe nothing more (a later join starts afresh)."""
        state = self._channels.pop(channel, None)
        if state is not None and state.filling is not None:
            state.filling.cancel()

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
                state.filling = self._clock.call_later(self._gap_wait, self._fill_soon, channel)
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
            self._tasks.spawn(self.catch_up(channel), name=f"fill-{channel}")

    async def catch_up(self, channel: str) -> None:
        """Deliver, from the store, every message of ``channel`` this node still owes its members."""
        async with self._lock:
            state = self._channels.get(channel)
            if state is None or state.next_id is None:
                return
            while True:
                try:
                    missing = await self._store.history(channel, state.next_id - 1, BATCH)
                except Exception as exc:  # the store is down: try this channel again soon
                    self._store_outage.failed(exc)
                    if state.filling is None and self._channels.get(channel) is state:
                        state.filling = self._clock.call_later(self._while_lost, self._fill_soon, channel)
                    return
                self._store_outage.answered()
                for stored in missing:
                    if stored.id < state.next_id:
                        continue
                    if stored.id > state.next_id:
                        break  # (ids grow by one per channel; a hole would be a store bug)
                    held = state.held.pop(stored.id, None)
                    await self._deliver(held[0] if held else stored.to_wire(), held[1] if held else None)
                    state.next_id = stored.id + 1
                await self._release(state)
                if len(missing) < BATCH:
                    return

    async def catch_up_all(self) -> None:
        """One safety round: catch up every channel this node's members joined."""
        for channel in [c for c, state in self._channels.items() if state.next_id is not None]:
            await self.catch_up(channel)

    def redis_lost(self) -> None:
        """The Redis subscription is down: nothing arrives from other nodes, so rounds run every ``while_lost``."""
        if not self._redis_lost:
            self._redis_lost = True
            self._schedule_round()

    def redis_back(self) -> None:
        """The Redis subscription is back (the caller catches each channel up): rounds are slow again."""
        if self._redis_lost:
            self._redis_lost = False
            # One more round soon: a node that could not publish goes on skipping for up to its
            # breaker's pause (a second) after Redis is back, and nothing else would find what it skipped.
            self._schedule_round(2 * self._while_lost)

    def start(self) -> None:
        """Start the safety rounds (idempotent)."""
        if not self._running:
            self._running = True
            self._schedule_round()

    async def stop(self) -> None:
        """Stop the safety rounds (a round in progress is a background task, ended with the others)."""
        self._running = False
        if self._round is not None:
            self._round.cancel()
            self._round = None

    def _schedule_round(self, delay: float | None = None) -> None:
        if not self._running:
            return
        if self._round is not None:
            self._round.cancel()
        self._round = self._clock.call_later(self.round_interval if delay is None else delay, self._round_due)

    def _round_due(self) -> None:
        self._round = None
        self._tasks.spawn(self._run_round(), name="channel-catch-up")

    async def _run_round(self) -> None:
        try:
            await self.catch_up_all()
        finally:
            if self._round is None:  # not rescheduled meanwhile (redis_lost / redis_back)
                self._schedule_round()
