"""Cluster delivery: a channel's messages reach every member on every node once and in id order,
whichever node stored them, and a Redis outage loses nothing acknowledged (hq/realtime/sequencer.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from pathlib import Path
from typing import AsyncIterator

import pytest

from .services import create_database, drop_database
from .sio import RecordingClient
from .support import HQServer, make_server
from .services import PrivateRedis


@contextlib.asynccontextmanager
async def _started(tmp_path: Path, redis_url: str, count: int) -> AsyncIterator[list[HQServer]]:
    """``count`` nodes on a fresh database and the given Redis, stopped and dropped afterwards."""
    url = await create_database()
    shared = {"storage": {"url": url, "revocation_poll": 0.1},
              "cluster": {"redis_url": redis_url, "channel": f"hq-test-{uuid.uuid4().hex[:8]}"},
              "auth": {"bcrypt_rounds": 4, "secret": "a shared cluster secret of at least 32 bytes!"},
              "limits": {"events_per_second": 1000.0, "events_burst": 1000}}
    started: list[HQServer] = []
    try:
        for n in range(count):
            started.append(make_server(tmp_path / "abc"[n], agents=None if n == 0 else {}, **shared).start())
        yield started
    finally:
        for node in started:
            node.stop()
        await drop_database(url)


@pytest.fixture
async def nodes(tmp_path: Path, private_redis: PrivateRedis) -> AsyncIterator[tuple[HQServer, HQServer]]:
    async with _started(tmp_path, private_redis.url, 2) as (a, b):
        yield a, b


@pytest.fixture
async def three_nodes(tmp_path: Path, private_redis: PrivateRedis) -> AsyncIterator[list[HQServer]]:
    async with _started(tmp_path, private_redis.url, 3) as started:
        yield started


async def test_messages_stored_on_two_nodes_arrive_in_id_order_everywhere(nodes) -> None:
    a, b = nodes
    members = [await RecordingClient().connect(node.url, node.login("fox")["access_token"]) for node in (a, b, a, b)]
    for member in members:
        assert (await member.call("join", {"channel": "missions"}))["ok"]
    senders = [await RecordingClient().connect(a.url, a.login("hank")["access_token"]),
               await RecordingClient().connect(b.url, b.login("dora")["access_token"])]

    async def burst(sender: RecordingClient, tag: str) -> list[int]:
        acks = await asyncio.gather(*(sender.call("message", {"channel": "missions", "text": f"{tag}{n}"})
                                      for n in range(30)))
        return [ack["id"] for ack in acks]
    ids = sorted(sum(await asyncio.gather(burst(senders[0], "a"), burst(senders[1], "b")), []))
    assert ids == list(range(1, 61))
    for member in members:
        received = await member.wait_for("message", count=60)
        await asyncio.sleep(0.2)
        assert [m["id"] for m in member.received("message")] == ids  # in order, none twice
    for client in members + senders:
        await client.close()


async def test_messages_stored_on_three_nodes_arrive_in_id_order_everywhere(three_nodes: list[HQServer]) -> None:
    a, b, c = three_nodes
    members = [await RecordingClient().connect(node.url, node.login("fox")["access_token"])
               for node in (a, b, c, a, b, c)]
    for member in members:
        assert (await member.call("join", {"channel": "missions"}))["ok"]
    senders = [await RecordingClient().connect(node.url, node.login(codename)["access_token"])
               for node, codename in ((a, "hank"), (b, "dora"), (c, "hank"))]

    async def burst(sender: RecordingClient, tag: str) -> list[int]:
        acks = await asyncio.gather(*(sender.call("message", {"channel": "missions", "text": f"{tag}{n}"})
                                      for n in range(25)))
        return [ack["id"] for ack in acks]
    ids = sorted(sum(await asyncio.gather(*(burst(s, tag) for s, tag in zip(senders, "abc"))), []))
    assert ids == list(range(1, 76))
    for member in members:
        await member.wait_for("message", count=75)
    await asyncio.sleep(0.2)
    for member in members:
        assert [m["id"] for m in member.received("message")] == ids  # in order, none twice
    for client in members + senders:
        await client.close()


async def test_a_redis_outage_loses_nothing_acknowledged(nodes, private_redis: PrivateRedis) -> None:
    a, b = nodes
    fox = await RecordingClient().connect(b.url, b.login("fox")["access_token"])
    assert (await fox.call("join", {"channel": "missions"}))["ok"]
    hank = await RecordingClient().connect(a.url, a.login("hank")["access_token"])
    assert (await hank.call("message", {"channel": "missions", "text": "before"}))["ok"]
    await fox.wait_for("message", count=1)
    private_redis.kill()
    during = []
    for n in range(10):
        started = time.monotonic()
        ack = await hank.call("message", {"channel": "missions", "text": f"during{n}"})
        assert ack["ok"] is True, ack
        assert time.monotonic() - started < 3  # an ack never waits long for a Redis that is gone
        during.append(ack["id"])
    received = await fox.wait_for("message", count=11, timeout=10)  # from the store, within ~1 s
    assert [m["id"] for m in received] == [1, *during]
    assert fox.sio.connected and hank.sio.connected
    private_redis.start()
    await asyncio.sleep(1.5)
    after = [(await hank.call("message", {"channel": "missions", "text": f"after{n}"}))["id"] for n in range(5)]
    received = await fox.wait_for("message", count=16, timeout=10)
    await asyncio.sleep(0.3)
    assert [m["id"] for m in fox.received("message")] == [1, *during, *after]
    for node in (a, b):
        assert "Traceback" not in node.log_path.read_text(errors="replace")
    await fox.close()
    await hank.close()
