"""Cluster delivery: a channel's messages reach every member on every node once and in id order,
whichever node stored them (hq/realtime/sequencer.py), on two and on three nodes.

A Redis outage under the same delivery is in tests/test_redis_outage.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import AsyncIterator

import pytest

from .cluster import Cluster, start_cluster
from .services import PrivateRedis
from .sio import RecordingClient

# Several nodes, outages or worker processes: `make test` runs it, `make test-fast` does not.
pytestmark = pytest.mark.cluster

PER_SENDER = 25
#: Bursts of concurrent messages: far above the default 20 events/s of one socket.
FAST_LIMITS = {"events_per_second": 1000.0, "events_burst": 1000}


@pytest.fixture(params=[2, 3], ids=["2-nodes", "3-nodes"])
async def nodes(request: pytest.FixtureRequest, tmp_path: Path,
                private_redis: PrivateRedis) -> AsyncIterator[Cluster]:
    async with start_cluster(tmp_path, request.param, private_redis.url, limits=FAST_LIMITS) as cluster:
        yield cluster


async def test_messages_stored_on_every_node_arrive_in_id_order_everywhere(nodes: Cluster) -> None:
    members = [await RecordingClient().connect(node.url, node.login("fox")["access_token"])
               for node in [*nodes, *nodes]]  # two members on each node
    for member in members:
        assert (await member.call("join", {"channel": "missions"}))["ok"]
    senders = [await RecordingClient().connect(node.url, node.login(codename)["access_token"])
               for node, codename in zip(nodes, ["hank", "dora", "hank"])]  # one sender on each node

    async def burst(sender: RecordingClient, tag: str) -> list[int]:
        acks = await asyncio.gather(*(sender.call("message", {"channel": "missions", "text": f"{tag}{n}"})
                                      for n in range(PER_SENDER)))
        return [ack["id"] for ack in acks]
    ids = sorted(sum(await asyncio.gather(*(burst(s, tag) for s, tag in zip(senders, "abc"))), []))
    total = PER_SENDER * len(nodes)
    assert ids == list(range(1, total + 1))
    for member in members:
        await member.wait_for("message", count=total)
    await asyncio.sleep(0.2)  # a duplicate arriving late would show up here
    for member in members:
        assert [m["id"] for m in member.received("message")] == ids  # in order, none twice
    for client in members + senders:
        await client.close()
    nodes.assert_clean_logs()
