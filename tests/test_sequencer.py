"""The cluster's channel sequencer (hq/realtime/sequencer.py): ids in order, once, gaps filled from the store."""

from __future__ import annotations

import asyncio
from typing import Any

from hq.realtime.sequencer import ChannelSequencer
from hq.store import Message


class Store:
    """The two store reads the sequencer makes, over a list of stored messages."""

    def __init__(self) -> None:
        self.messages: dict[str, list[Message]] = {}
        self.down = False

    def add(self, channel: str, text: str) -> dict[str, Any]:
        stored = self.messages.setdefault(channel, [])
        message = Message(len(stored) + 1, channel, "hank", text, "2026-11-30T00:00:00.000Z")
        stored.append(message)
        return message.to_wire()

    async def history(self, channel: str, after_id: int | None, limit: int) -> list[Message]:
        if self.down:
            raise ConnectionRefusedError("down")
        return [m for m in self.messages.get(channel, []) if m.id > (after_id or 0)][:limit]

    async def last_message_id(self, channel: str) -> int:
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


async def test_a_gap_that_redis_never_fills_is_read_from_the_store() -> None:
    store = Store()
    seq, delivered = sequencer(store, gap_wait=0.01)
    seq.joined("missions", 0)
    m = [store.add("missions", f"t{n}") for n in range(4)]
    await seq.offer(m[0])
    await seq.offer(m[3])  # 2 and 3 were published while Redis was away
    await asyncio.sleep(0.1)
    assert delivered == [1, 2, 3, 4]


async def test_messages_no_broadcast_brought_are_caught_up_from_the_store() -> None:
    store = Store()
    seq, delivered = sequencer(store, catch_up=0.05)
    seq.joined("missions", 0)
    seq.start()
    try:
        store.down = True
        for n in range(3):
            store.add("missions", f"t{n}")  # stored on another node during a Redis outage
        await asyncio.sleep(0.2)
        assert delivered == []  # the store is down too: nothing to read yet, nothing lost
        store.down = False
        await asyncio.sleep(0.2)
        assert delivered == [1, 2, 3]
        await seq.offer(store.add("missions", "after"))
        assert delivered == [1, 2, 3, 4]
    finally:
        await seq.stop()
