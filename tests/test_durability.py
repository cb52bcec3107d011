"""Durability: every message acknowledged before HQ is killed with SIGKILL is in history after a
restart, with the same id, sender, text and time, and ids carry on from where they stopped."""

from __future__ import annotations

import asyncio
import signal
import uuid
from typing import Callable

import pytest

from .sio import RecordingClient
from .support import HQServer


@pytest.mark.real_process  # SIGKILL needs a process to kill
async def test_acked_messages_survive_sigkill(hq_factory: Callable[..., HQServer]) -> None:
    hq = hq_factory(agents={"hank": "handler"})
    run = uuid.uuid4().hex[:8]
    client = RecordingClient()
    try:
        await client.connect(hq.url, hq.login("hank")["access_token"])
        acked = {}
        for i in range(5):  # one after another ...
            text = f"{run} sequential {i} ✓"
            acked[(await client.call("message", {"channel": "missions", "text": text}))["id"]] = text
        texts = [f"{run} concurrent {i}" for i in range(20)]  # ... and many in flight at once
        answers = await asyncio.gather(*(client.call("message", {"channel": "hq", "text": t}) for t in texts))
        assert all(a["ok"] for a in answers)
        acked_hq = {a["id"]: t for a, t in zip(answers, texts)}
        before = (await client.call("history", {"channel": "missions", "limit": 500}))["messages"]
    finally:
        await client.close()
    hq.stop(signal.SIGKILL)  # no chance to flush anything that was not already durable

    hq.start()
    client = RecordingClient()
    try:
        await client.connect(hq.url, hq.login("hank")["access_token"])
        missions = (await client.call("history", {"channel": "missions", "limit": 500}))["messages"]
        assert missions == before  # same ids, senders, texts and timestamps
        assert {m["id"]: m["text"] for m in missions} == acked and list(acked) == [1, 2, 3, 4, 5]
        channel_hq = (await client.call("history", {"channel": "hq", "limit": 500}))["messages"]
        assert {m["id"]: m["text"] for m in channel_hq} == acked_hq
        assert [m["id"] for m in channel_hq] == list(range(1, 21))
        assert all(m["from"] == "hank" for m in missions + channel_hq)
        assert (await client.call("message", {"channel": "missions", "text": "after the crash"}))["id"] == 6
        assert (await client.call("join", {"channel": "hq"}))["last_id"] == 20
    finally:
        await client.close()
