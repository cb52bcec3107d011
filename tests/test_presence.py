"""Presence: who is online in a channel (the ``presence`` event and its ack), on one node and across
a cluster of two nodes on PostgreSQL and a private Redis, through a node's crash and a Redis outage."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from hq.realtime.presence import EXPIRY, HEARTBEAT

from .services import create_database, drop_database
from .sio import RecordingClient
from .support import HQServer, make_server
from .services import PrivateRedis

SETTLE = 0.3  # long enough for an event that should not come to have come


async def connect(node: HQServer, codename: str, *channels: str) -> RecordingClient:
    """A socket of ``codename`` on ``node`` that joined ``channels``."""
    client = await RecordingClient().connect(node.url, node.login(codename)["access_token"])
    for channel in channels:
        assert (await client.call("join", {"channel": channel}))["ok"]
    return client


async def online(client: RecordingClient, channel: str = "missions") -> dict[str, tuple[str, int]]:
    """``{codename: (role, connections)}`` from the ``presence`` ack."""
    ack = await client.call("presence", {"channel": channel})
    assert ack["ok"] is True, ack
    return {a["codename"]: (a["role"], a["connections"]) for a in ack["agents"]}


def changes(client: RecordingClient, codename: str) -> list[bool]:
    """The ``online`` values of the presence events about ``codename`` received so far."""
    return [e["online"] for e in client.received("presence") if e["codename"] == codename]


async def wait_changes(client: RecordingClient, codename: str, expected: list[bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while changes(client, codename) != expected:
        assert time.monotonic() < deadline, f"presence events {client.received('presence')!r}, expected {expected!r}"
        await asyncio.sleep(0.02)


async def wait_online(client: RecordingClient, expected: dict[str, tuple[str, int]], timeout: float = 10) -> float:
    """Wait until the ack lists exactly ``expected``; returns the monotonic time it did."""
    deadline = time.monotonic() + timeout
    while (listed := await online(client)) != expected:
        assert time.monotonic() < deadline, f"presence lists {listed!r}, expected {expected!r}"
        await asyncio.sleep(0.1)
    return time.monotonic()


async def close_all(*clients: RecordingClient) -> None:
    for client in clients:
        await client.close()


# one node -------------------------------------------------------------------------------------------

async def test_presence_lists_agents_and_counts_sockets(hq: HQServer) -> None:
    fox = await connect(hq, "fox", "missions")
    hank = await connect(hq, "hank", "missions")
    assert await online(fox) == {"fox": ("field-operative", 1), "hank": ("handler", 1)}
    await wait_changes(fox, "hank", [True])  # members hear of an arrival
    fox2 = await connect(hq, "fox", "missions")
    assert (await fox2.call("join", {"channel": "missions"}))["ok"]  # the same socket twice counts once
    assert await online(hank) == {"fox": ("field-operative", 2), "hank": ("handler", 1)}
    await asyncio.sleep(SETTLE)
    assert changes(hank, "fox") == []  # fox was online before hank joined, and a second socket is no arrival
    assert await online(hank, "hq") == {}
    await close_all(fox, fox2, hank)


async def test_the_last_socket_leaving_or_disconnecting_goes_offline(hq: HQServer) -> None:
    hank = await connect(hq, "hank", "missions")
    fox = await connect(hq, "fox", "missions")
    fox2 = await connect(hq, "fox", "missions")
    await wait_changes(hank, "fox", [True])
    assert (await fox.call("leave", {"channel": "missions"}))["ok"]
    await asyncio.sleep(SETTLE)
    assert changes(hank, "fox") == [True]  # fox2 is still there
    assert await online(hank) == {"fox": ("field-operative", 1), "hank": ("handler", 1)}
    await fox2.close()  # the last socket disconnects
    await wait_changes(hank, "fox", [True, False])
    assert await online(hank) == {"hank": ("handler", 1)}
    assert (await fox.call("join", {"channel": "missions"}))["ok"]
    await wait_changes(hank, "fox", [True, False, True])
    assert (await fox.call("leave", {"channel": "missions"}))["ok"]  # the last socket leaves
    await wait_changes(hank, "fox", [True, False, True, False])
    assert await online(hank) == {"hank": ("handler", 1)}
    assert changes(fox, "fox")[-1:] == [True]  # fox left: it hears nothing more about missions
    await close_all(fox, hank)


async def test_presence_is_forbidden_below_read_clearance(hq: HQServer) -> None:
    ana = await connect(hq, "ana")
    fox = await connect(hq, "fox")
    expected: list[tuple[RecordingClient, Any, str]] = [
        (ana, {"channel": "missions"}, "forbidden"), (fox, {"channel": "hq"}, "forbidden"),
        (fox, {"channel": "nowhere"}, "not_found"), (fox, {}, "bad_request"), (fox, "missions", "bad_request"),
        (fox, {"channel": 7}, "bad_request"), (fox, None, "bad_request")]
    for client, payload, code in expected:
        ack = await client.call("presence", payload)
        assert ack["ok"] is False and ack["error"]["code"] == code, (payload, ack)
    assert fox.sio.connected and ana.sio.connected
    await close_all(ana, fox)


# a cluster ------------------------------------------------------------------------------------------

@pytest.fixture
async def nodes(tmp_path: Path, private_redis: PrivateRedis) -> AsyncIterator[tuple[HQServer, HQServer]]:
    url = await create_database()
    shared = {"storage": {"url": url, "revocation_poll": 0.1},
              "cluster": {"redis_url": private_redis.url, "channel": f"hq-test-{uuid.uuid4().hex[:8]}"},
              "auth": {"bcrypt_rounds": 4, "secret": "a shared cluster secret of at least 32 bytes!"}}
    a = make_server(tmp_path / "a", **shared).start()
    b = make_server(tmp_path / "b", agents={}, **shared).start()
    yield a, b
    a.stop()
    b.stop()
    await drop_database(url)
    for node in (a, b):
        assert "Traceback" not in node.log_path.read_text(errors="replace")


async def test_presence_shows_agents_on_every_node(nodes) -> None:
    a, b = nodes
    fox = await connect(a, "fox", "missions")
    hank = await connect(b, "hank", "missions")
    both = {"fox": ("field-operative", 1), "hank": ("handler", 1)}
    assert await online(fox) == both
    assert await online(hank) == both
    await wait_changes(fox, "hank", [True])  # an arrival on b, told on a
    fox2 = await connect(b, "fox", "missions")
    assert await online(fox) == {"fox": ("field-operative", 2), "hank": ("handler", 1)}
    assert await online(hank) == {"fox": ("field-operative", 2), "hank": ("handler", 1)}
    await fox.close()
    await asyncio.sleep(SETTLE)
    assert changes(hank, "fox") == []  # fox is still on b
    assert await online(hank) == {"fox": ("field-operative", 1), "hank": ("handler", 1)}
    await fox2.close()
    await wait_changes(hank, "fox", [False])
    assert await online(hank) == {"hank": ("handler", 1)}
    await hank.close()


async def test_a_crashed_nodes_agents_leave_presence_within_the_expiry(nodes) -> None:
    a, b = nodes
    hank = await connect(a, "hank", "missions")
    fox = await connect(b, "fox", "missions")
    await wait_changes(hank, "fox", [True])
    assert await online(hank) == {"fox": ("field-operative", 1), "hank": ("handler", 1)}
    b.stop(signal.SIGKILL)
    killed = time.monotonic()
    gone = await wait_online(hank, {"hank": ("handler", 1)}, timeout=EXPIRY + 5)
    assert gone - killed <= EXPIRY + 1
    # The first live node to notice (at its next heartbeat) tells the members.
    await wait_changes(hank, "fox", [True, False], timeout=HEARTBEAT + 3)
    print(f"\ncrashed node's agent gone from presence after {gone - killed:.1f} s, "
          f"offline event after {hank.events[-1][2] - killed:.1f} s")
    await fox.close()
    await hank.close()


async def test_a_redis_outage_never_breaks_join_leave_or_disconnect(nodes, private_redis: PrivateRedis) -> None:
    a, b = nodes
    hank = await connect(a, "hank", "missions")
    dora = await connect(b, "dora", "missions")
    assert await online(hank) == {"dora": ("director", 1), "hank": ("handler", 1)}
    private_redis.kill()
    fox = await RecordingClient().connect(a.url, a.login("fox")["access_token"])
    for event, payload in [("join", {"channel": "missions"}), ("presence", {"channel": "missions"}),
                           ("leave", {"channel": "missions"}), ("join", {"channel": "missions"})]:
        started = time.monotonic()
        ack = await fox.call(event, payload)
        assert ack["ok"] is True, (event, ack)
        assert time.monotonic() - started < 2.5, event  # bounded, whatever Redis does
    # This node's view while Redis is away: a's agents, told to a's members.
    assert await online(hank) == {"fox": ("field-operative", 1), "hank": ("handler", 1)}
    await wait_changes(hank, "fox", [True, False, True])
    fox2 = await RecordingClient().connect(a.url, a.login("fox")["access_token"])
    assert (await fox2.call("join", {"channel": "missions"}))["ok"]
    await fox2.close()  # a disconnect during the outage
    private_redis.start()
    # Back: each node writes its agents back (Redis lost them all) and the cluster-wide view returns.
    everyone = {"dora": ("director", 1), "fox": ("field-operative", 1), "hank": ("handler", 1)}
    await wait_online(hank, everyone, timeout=HEARTBEAT + EXPIRY)
    await wait_online(dora, everyone, timeout=HEARTBEAT + 5)
    await wait_changes(dora, "fox", [True])  # b's members hear of fox once Redis carries it again
    await close_all(fox, hank, dora)
    warnings = [node.log_path.read_text().count("presence: Redis does not answer") for node in (a, b)]
    assert warnings[0] == 1 and warnings[1] <= 1  # one per outage (b may not have asked Redis meanwhile)
