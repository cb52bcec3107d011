"""The cluster's socket registry (hq/cluster/socket_registry.py) in-process, on a private Redis.

Two registries stand for two nodes. Short heartbeats and TTLs make expiry quick; the Redis is a
``redis-server`` of the test's own, so killing it touches nothing shared.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

import pytest

from hq.cluster.redis import RETRY_AFTER, redis_client
from hq.cluster.socket_registry import ConnectionRegistry, Listing

from .services import PrivateRedis

FAST = {"heartbeat": 0.2, "expiry": 1.0}


def add(registry: ConnectionRegistry, socket_id: str, sid: str = "a" * 32, codename: str = "fox", exp: int = 2_000_000_000) -> None:
    registry.add(socket_id, session_id=sid, codename=codename, address="127.0.0.1", transport="websocket",
                 user_agent="test", exp=exp)


async def eventually(probe: Callable[[], Any], predicate: Callable[[Any], bool], timeout: float = 5.0) -> Any:
    """Await ``probe()`` until ``predicate`` holds (or fail with the last value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if predicate(value):
            return value
        assert time.monotonic() < deadline, f"still {value!r} after {timeout} s"
        await asyncio.sleep(0.05)


def sockets_of(listing: Listing) -> set[tuple[str, str]]:
    return {(record.node, record.codename) for record in listing.records}


async def test_one_node_in_memory() -> None:
    registry = ConnectionRegistry(node="here")
    add(registry, "s1")
    add(registry, "s2", codename="Hank", exp=5)
    registry.update_expiry("s2", 99)
    registry.remove("s1")
    registry.remove("never-added")
    listing = await registry.cluster()
    assert listing.complete and not registry.clustered
    (record,) = listing.records
    assert (record.node, record.codename, record.exp) == ("here", "Hank", 99)
    assert record.to_wire() == {"node": "here", "address": "127.0.0.1", "transport": "websocket",
                                "user_agent": "test", "since": record.since, "exp": 99}


async def test_a_transport_upgrade_is_followed() -> None:
    registry = ConnectionRegistry(node="here")
    registry.add("s1", session_id="a" * 32, codename="fox", address="::1", transport="polling", user_agent="", exp=1)
    registry.follow_transports(lambda socket_id: "websocket")
    assert [r.transport for r in (await registry.cluster()).records] == ["websocket"]


@pytest.fixture
async def nodes(private_redis: PrivateRedis) -> Any:
    clients = [redis_client(private_redis.url) for _ in range(2)]
    a, b = (ConnectionRegistry(client, prefix="t", node=name, **FAST) for client, name in zip(clients, "ab"))
    await a.start()
    await b.start()
    yield a, b
    await a.stop()
    await b.stop()
    for client in clients:
        await client.aclose()


async def test_each_node_lists_the_others_sockets(nodes: tuple[ConnectionRegistry, ConnectionRegistry]) -> None:
    a, b = nodes
    add(a, "s1", codename="fox")
    add(a, "s2", codename="fox")
    add(b, "s3", codename="hank")
    both = {("a", "fox"), ("b", "hank")}
    listing = await eventually(b.cluster, lambda listing: len(listing.records) == 3)
    assert listing.complete and sockets_of(listing) == both
    await eventually(a.cluster, lambda listing: len(listing.records) == 3)
    a.remove("s1")
    a.update_expiry("s2", 7)
    listing = await eventually(b.cluster, lambda listing: len(listing.records) == 2)
    assert {r.exp for r in listing.records if r.node == "a"} == {7}


async def test_a_node_that_stops_cleanly_is_gone_at_once(nodes: tuple[ConnectionRegistry, ConnectionRegistry]) -> None:
    a, b = nodes
    add(a, "s1")
    await eventually(b.cluster, lambda listing: len(listing.records) == 1)
    await a.stop()
    assert (await b.cluster()).records == []


async def test_stop_ends_even_when_a_change_wakes_the_writer_as_it_stops(
        nodes: tuple[ConnectionRegistry, ConnectionRegistry]) -> None:
    """Sockets close as HQ stops: a change wakes the writer in the very loop turn it is cancelled in
    (asyncio.wait_for on Python 3.11 would swallow that cancellation and the stop would never end)."""
    a, _ = nodes
    await asyncio.sleep(0.3)  # the writer waits for a change
    add(a, "s1")
    await asyncio.wait_for(a.stop(), 5)


async def test_a_dead_nodes_sockets_expire(nodes: tuple[ConnectionRegistry, ConnectionRegistry]) -> None:
    a, b = nodes
    add(a, "s1")
    await eventually(b.cluster, lambda listing: len(listing.records) == 1)
    await a._loop.stop()  # a crash: the writer ends without a goodbye, the hash stays until its TTL runs out
    a._calls.target = None  # and its stop() at teardown cannot clean up either
    started = time.monotonic()
    assert len((await b.cluster()).records) == 1
    await eventually(b.cluster, lambda listing: listing.records == [], timeout=FAST["expiry"] + 3)
    assert time.monotonic() - started <= FAST["expiry"] + 3


async def test_while_redis_is_down_a_node_lists_its_own_and_writes_back_after(
        private_redis: PrivateRedis, nodes: tuple[ConnectionRegistry, ConnectionRegistry],
        caplog: pytest.LogCaptureFixture) -> None:
    a, b = nodes
    add(a, "s1")
    add(b, "s2", codename="hank")
    await eventually(b.cluster, lambda listing: len(listing.records) == 2)
    private_redis.kill()
    with caplog.at_level(logging.WARNING, logger="hq.cluster.socket_registry"):
        listing = await b.cluster()
        assert not listing.complete and sockets_of(listing) == {("b", "hank")}
        add(a, "s3", codename="ana")  # made during the outage, never written then
        b.remove("s2")
        await asyncio.sleep(RETRY_AFTER + 0.5)
        listing = await b.cluster()
        assert not listing.complete and listing.records == []
    warnings = [r for r in caplog.records if r.name == "hq.cluster.socket_registry" and r.levelno == logging.WARNING]
    assert 1 <= len(warnings) <= 2  # once per node per outage, not once per call
    private_redis.start()  # empty: everything must be written back
    listing = await eventually(b.cluster, lambda listing: listing.complete and len(listing.records) == 2,
                               timeout=10)
    assert sockets_of(listing) == {("a", "fox"), ("a", "ana")}
