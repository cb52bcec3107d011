"""The cluster's channel sequencer (hq/realtime/sequencer.py): ids in order, once, gaps filled from the store,
and the store asked nothing per second while all is well (its timers run on a manual clock: no sleeping)."""

from __future__ import annotations

import asyncio
from typing import Any

from hq.clock import ManualClock
from hq.realtime.sequencer import ChannelSequencer
from hq.store import Message
from hq.tasks import BackgroundTasks


class Store:
    """The two store reads the sequencer makes, over a list of stored messages."""

    def __init__(self) -> None:
        self.messages: dict[str, list[Message]] = {}
        self.down = False
        self.queries: list[str] = []  # the channel of every read, answered or not

    def add(self, channel: str, text: str) -> dict[str, Any]:
        stored = self.messages.setdefault(channel, [])
        message = Message(len(stored) + 1, channel, "hank", text, "2026-11-30T00:00:00.000Z")
        stored.append(message)
        return message.to_wire()

    async def history(self, channel: str, after_id: int | None, limit: int) -> list[Message]:
        self.queries.append(channel)
        if self.down:
            raise ConnectionRefusedError("down")
        return [m for m in self.messages.get(channel, []) if m.id > (after_id or 0)][:limit]

    async def last_message_id(self, channel: str) -> int:
        self.queries.append(channel)
        if self.down:
            raise ConnectionRefusedError("down")
        return len(self.messages.get(channel, []))


def sequencer(store: Store, **kwargs: Any) -> tuple[ChannelSequencer, list[int]]:
    delivered: list[int] = []

    async def deliver(message: dict[str, Any], skip_sid: Any) -> None:
        delivered.append(message["id"])
    return ChannelSequencer(store, deliver, **kwargs), delivered  # type: ignore[arg-type]


async def test_out_of_order_and_duplicate_ids_are_delivered_in_order_once() -> None:
    store = Store()
    seq, delivered = sequencer(store)
    seq.joined("missions", 0)
    m = [store.add("missions", f"t{n}") for n in range(5)]
    for message in (m[1], m[0], m[0], m[3], m[2], m[4], m[1]):
        await seq.offer(message)
    assert delivered == [1, 2, 3, 4, 5]


class Clocked:
    """A sequencer on a manual clock, its background tasks awaited by :meth:`settle`."""

    def __init__(self, store: Store, **kwargs: Any) -> None:
        self.clock = ManualClock(start=1_000_000.0)
        self.tasks = BackgroundTasks()
        self.sequencer, self.delivered = sequencer(store, clock=self.clock, tasks=self.tasks, **kwargs)

    async def advance(self, seconds: float) -> None:
        """Move the clock on, then let every fill or round it started finish."""
        self.clock.advance(seconds)
        await self.settle()

    async def settle(self) -> None:
        for _ in range(100):
            await asyncio.sleep(0)
            if not len(self.tasks):
                return
        raise AssertionError("background tasks did not finish")


async def test_a_gap_that_redis_never_fills_is_read_from_the_store() -> None:
    store = Store()
    node = Clocked(store, gap_wait=0.05)
    node.sequencer.joined("missions", 0)
    m = [store.add("missions", f"t{n}") for n in range(4)]
    await node.sequencer.offer(m[0])
    await node.sequencer.offer(m[3])  # 2 and 3 were published while Redis was away
    await node.advance(0.04)
    assert node.delivered == [1] and store.queries == []  # held, not asked yet
    await node.advance(0.01)
    assert node.delivered == [1, 2, 3, 4] and store.queries == ["missions"]  # one read fills the gap


async def test_an_idle_node_asks_the_store_nothing_per_second() -> None:
    store = Store()
    node = Clocked(store, catch_up=30.0)
    channels = [f"c{n}" for n in range(5)]
    for channel in channels:
        node.sequencer.joined(channel, 0)
    node.sequencer.start()
    for _ in range(29):
        await node.advance(1.0)
    assert store.queries == []  # 29 idle seconds: not one query (it was one per channel per second)
    await node.advance(1.0)
    assert sorted(store.queries) == channels  # the safety round: one read per joined channel
    for _ in range(270):
        await node.advance(1.0)
    assert len(store.queries) == 10 * len(channels)  # 300 s: ten rounds, 1/6 query per second for 5 channels
    node.sequencer.forget("c0")  # its last member left
    await node.advance(30.0)
    assert store.queries[-4:] == channels[1:]
    await node.sequencer.stop()
    await node.advance(300.0)
    assert len(store.queries) == 10 * len(channels) + 4


async def test_while_redis_is_lost_the_store_is_read_every_second_and_slowly_again_after() -> None:
    store = Store()
    node = Clocked(store, catch_up=30.0, while_lost=1.0)
    node.sequencer.joined("missions", 0)
    node.sequencer.start()
    node.sequencer.redis_lost()
    for n in range(3):
        store.add("missions", f"t{n}")  # stored on another node; its publication never came
    await node.advance(1.0)
    assert node.delivered == [1, 2, 3]
    store.down = True  # the store is down too: nothing to read yet, nothing lost
    store.add("missions", "t3")
    await node.advance(1.0)
    assert node.delivered == [1, 2, 3]
    store.down = False
    await node.advance(1.0)
    assert node.delivered == [1, 2, 3, 4]
    await node.sequencer.offer(store.add("missions", "after"))
    assert node.delivered == [1, 2, 3, 4, 5]
    node.sequencer.redis_back()
    asked = len(store.queries)
    await node.advance(1.0)
    assert len(store.queries) == asked
    store.add("missions", "skipped")  # its node's publisher was still resting when Redis came back
    await node.advance(1.0)
    assert node.delivered == [1, 2, 3, 4, 5, 6] and len(store.queries) == asked + 1  # the one settling round
    for _ in range(29):
        await node.advance(1.0)
    assert len(store.queries) == asked + 1  # slow again
    await node.advance(1.0)
    assert len(store.queries) == asked + 2
    await node.sequencer.stop()


async def test_a_failed_fill_is_retried_until_the_store_answers() -> None:
    store = Store()
    node = Clocked(store, gap_wait=0.05, while_lost=1.0)
    node.sequencer.joined("missions", 0)
    m = [store.add("missions", f"t{n}") for n in range(3)]
    store.down = True
    await node.sequencer.offer(m[2])
    await node.advance(0.05)
    assert node.delivered == [] and store.queries == ["missions"]
    await node.advance(1.0)
    assert store.queries == ["missions"] * 2  # retried after while_lost, not in a loop
    store.down = False
    await node.advance(1.0)
    assert node.delivered == [1, 2, 3]
    await node.advance(60.0)
    assert store.queries == ["missions"] * 3  # caught up: no more retries (the round was never started)
