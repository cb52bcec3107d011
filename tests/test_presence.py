"""Presence: who is online in a channel (the ``presence`` event and its ack), on one node and across
clusters of two and three nodes on PostgreSQL and a private Redis, through a node's crash and a Redis
outage; and the ``[cluster] presence_heartbeat`` / ``presence_ttl`` settings that pace the expiry."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from hq.config import ConfigError, load_settings
from hq.cluster.presence import EXPIRY, HEARTBEAT, Presence
from hq.cluster.redis import redis_client

from .cli import run_cli
from .cluster import FAST_PRESENCE, Cluster, start_cluster
from .services import REDIS_URL, PrivateRedis, ensure_redis
from .sio import RecordingClient
from .support import HQServer, free_port, write_config

#: The cluster tests' pace (tests/cluster.py): a dead node's entries expire in seconds, not 15 s.
BEAT = FAST_PRESENCE["presence_heartbeat"]
TTL = FAST_PRESENCE["presence_ttl"]

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

@pytest.fixture(params=[2, 3], ids=["2-nodes", "3-nodes"])
async def nodes(request: pytest.FixtureRequest, tmp_path: Path, private_redis: PrivateRedis) -> AsyncIterator[Cluster]:
    async with start_cluster(tmp_path, request.param, private_redis.url, cluster=FAST_PRESENCE) as cluster:
        yield cluster
        cluster.stop()
        cluster.assert_clean_logs()


@pytest.mark.cluster
async def test_presence_shows_agents_on_every_node(nodes: Cluster) -> None:
    first, second, last = nodes[0], nodes[1], nodes[-1]
    lookers = [await connect(node, "dora") for node in nodes]  # they ask, from every node, without joining
    fox = await connect(first, "fox", "missions")
    hank = await connect(last, "hank", "missions")
    both = {"fox": ("field-operative", 1), "hank": ("handler", 1)}
    for looker in lookers:
        assert await online(looker) == both
    await wait_changes(fox, "hank", [True])  # an arrival on the last node, told on the first
    fox2 = await connect(second, "fox", "missions")
    for looker in lookers:
        assert await online(looker) == {"fox": ("field-operative", 2), "hank": ("handler", 1)}
    await fox.close()
    await asyncio.sleep(SETTLE)
    assert changes(hank, "fox") == []  # fox is still on the second node
    for looker in lookers:
        assert await online(looker) == {"fox": ("field-operative", 1), "hank": ("handler", 1)}
    await fox2.close()
    await wait_changes(hank, "fox", [False])
    for looker in lookers:
        assert await online(looker) == {"hank": ("handler", 1)}
    await close_all(hank, *lookers)


@pytest.mark.cluster
async def test_a_crashed_nodes_agents_leave_presence_within_the_ttl(nodes: Cluster) -> None:
    survivors, crashed = nodes.nodes[:-1], nodes[-1]
    # A member on every node that stays (hank on the first, dora on the others), fox on the one that dies.
    members = [await connect(node, "hank" if i == 0 else "dora", "missions") for i, node in enumerate(survivors)]
    fox = await connect(crashed, "fox", "missions")
    for member in members:
        await wait_changes(member, "fox", [True])
    stayed = {"hank": ("handler", 1)}
    if len(survivors) > 1:
        stayed["dora"] = ("director", len(survivors) - 1)
    assert await online(members[0]) == {"fox": ("field-operative", 1), **stayed}
    crashed.stop(signal.SIGKILL)
    killed = time.monotonic()
    gone = await wait_online(members[0], stayed, timeout=TTL + 5)
    assert gone - killed <= TTL + 1
    for member in members[1:]:
        assert await online(member) == stayed
    # The first live node to notice (at its next heartbeat) tells the members on every node, once.
    for member in members:
        await wait_changes(member, "fox", [True, False], timeout=BEAT + 3)
    offline_at = max(e[2] for e in members[0].events if e[0] == "presence" and e[1]["codename"] == "fox")
    await asyncio.sleep(max(SETTLE, BEAT))  # a second node claiming the dead one would tell them again here
    for member in members:
        assert changes(member, "fox") == [True, False]
    print(f"\n{len(nodes)} nodes: crashed node's agent gone from presence after {gone - killed:.1f} s, "
          f"offline event after {offline_at - killed:.1f} s (heartbeat {BEAT} s, ttl {TTL} s)")
    await fox.close()
    await close_all(*members)


@pytest.mark.cluster
async def test_a_redis_outage_never_breaks_join_leave_or_disconnect(nodes: Cluster,
                                                                   private_redis: PrivateRedis) -> None:
    first, others = nodes[0], nodes.nodes[1:]
    hank = await connect(first, "hank", "missions")
    doras = [await connect(node, "dora", "missions") for node in others]  # dora on every other node
    assert await online(hank) == {"dora": ("director", len(others)), "hank": ("handler", 1)}
    private_redis.kill()
    fox = await RecordingClient().connect(first.url, first.login("fox")["access_token"])
    for event, payload in [("join", {"channel": "missions"}), ("presence", {"channel": "missions"}),
                           ("leave", {"channel": "missions"}), ("join", {"channel": "missions"})]:
        started = time.monotonic()
        ack = await fox.call(event, payload)
        assert ack["ok"] is True, (event, ack)
        assert time.monotonic() - started < 2.5, event  # bounded, whatever Redis does
    # This node's view while Redis is away: the first node's agents, told to its members.
    assert await online(hank) == {"fox": ("field-operative", 1), "hank": ("handler", 1)}
    await wait_changes(hank, "fox", [True, False, True])
    fox2 = await RecordingClient().connect(first.url, first.login("fox")["access_token"])
    assert (await fox2.call("join", {"channel": "missions"}))["ok"]
    await fox2.close()  # a disconnect during the outage
    private_redis.start()
    # Back: each node writes its agents back (Redis lost them all) and the cluster-wide view returns.
    everyone = {"dora": ("director", len(others)), "fox": ("field-operative", 1), "hank": ("handler", 1)}
    await wait_online(hank, everyone, timeout=BEAT + TTL + 5)
    for dora in doras:
        await wait_online(dora, everyone, timeout=BEAT + 5)
        await wait_changes(dora, "fox", [True])  # other nodes' members hear of fox once Redis carries it again
    await close_all(fox, hank, *doras)
    warnings = [node.log_path.read_text().count("presence: Redis does not answer") for node in nodes]
    # One per outage (the others may not have asked Redis meanwhile).
    assert warnings[0] == 1 and all(count <= 1 for count in warnings[1:]), warnings


# settings -------------------------------------------------------------------------------------------

def test_presence_pace_defaults_to_5_s_heartbeat_and_15_s_ttl(tmp_path: Path) -> None:
    settings = load_settings(None, environ={})
    assert (settings.cluster.presence_heartbeat, settings.cluster.presence_ttl) == (HEARTBEAT, EXPIRY) == (5.0, 15.0)
    config = tmp_path / "config.toml"
    write_config(config, {"cluster": {"presence_heartbeat": 1, "presence_ttl": 2.5}})
    settings = load_settings(config, environ={"HQ_CLUSTER_PRESENCE_TTL": "4"})
    assert (settings.cluster.presence_heartbeat, settings.cluster.presence_ttl) == (1.0, 4.0)


@pytest.mark.parametrize("values, key", [
    ({"presence_heartbeat": 0}, "cluster.presence_heartbeat"),
    ({"presence_heartbeat": -1.0}, "cluster.presence_heartbeat"),
    ({"presence_heartbeat": 0.01}, "cluster.presence_heartbeat"),
    ({"presence_heartbeat": float("nan")}, "cluster.presence_heartbeat"),
    ({"presence_ttl": 5}, "cluster.presence_ttl"),  # equal to the default heartbeat
    ({"presence_heartbeat": 3, "presence_ttl": 2}, "cluster.presence_ttl"),
    ({"presence_ttl": float("inf")}, "cluster.presence_ttl"),
    ({"presence_ttl": 7200}, "cluster.presence_ttl"),
    ({"presence_ttl": "15"}, "cluster.presence_ttl"),
    ({"presence_heartbeat": True}, "cluster.presence_heartbeat"),
], ids=["zero", "negative", "too-fast", "nan", "ttl-equal", "ttl-below", "ttl-inf", "ttl-over-an-hour",
        "ttl-string", "heartbeat-bool"])
def test_a_bad_presence_pace_is_refused_naming_the_key(tmp_path: Path, values: dict[str, Any], key: str) -> None:
    config = tmp_path / "config.toml"
    lines = ["[cluster]"] + [f"{name} = {_toml_number(value)}" for name, value in values.items()]
    config.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as refused:
        load_settings(config, environ={})
    assert str(refused.value).startswith(f"config: {key}: "), refused.value


def _toml_number(value: Any) -> str:
    """TOML for the cases above (TOML spells NaN and infinity ``nan`` and ``inf``)."""
    if isinstance(value, float) and value != value:
        return "nan"
    if value == float("inf"):
        return "inf"
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else repr(value)


def test_serve_refuses_a_ttl_not_above_the_heartbeat_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    write_config(config, {"server": {"port": free_port()}})  # were it accepted, serve would run: a timeout
    result = run_cli(config, "serve", env={"HQ_CLUSTER_PRESENCE_TTL": "2", "HQ_CLUSTER_PRESENCE_HEARTBEAT": "2"},
                     timeout=30)
    assert result.returncode == 2, result
    assert result.stderr.strip().splitlines() == [
        "hq: config: cluster.presence_ttl: must be greater than presence_heartbeat and at most 3600 seconds"]


def test_presence_itself_refuses_a_ttl_not_above_the_heartbeat() -> None:
    with pytest.raises(ValueError):
        Presence(["missions"], heartbeat=2.0, ttl=2.0)
    with pytest.raises(ValueError):
        Presence(["missions"], heartbeat=0.0, ttl=2.0)


@pytest.mark.parametrize("steps", range(8))
async def test_stop_ends_the_heartbeat_whenever_it_comes(steps: int) -> None:
    """A SIGTERM stops HQ, whatever the heartbeat is doing when it comes.

    A cancellation can be lost on the way: asyncio.wait_for (Python 3.11) returns normally when the
    task is cancelled just as its event is set, and redis-py (8.1) sometimes completes a command the
    task was cancelled in. A loop that relied on the cancellation alone would never end, and
    ``stop()`` (so HQ's shutdown) would wait for it forever. ``steps`` moves the moment of the stop
    over the heartbeat's Redis calls.
    """
    ensure_redis()
    client = redis_client(REDIS_URL)
    presence = Presence(["missions", "hq"], client, prefix=f"hq-test-{uuid.uuid4().hex[:8]}", heartbeat=0.1, ttl=2.0)
    try:
        await presence.start()
        await asyncio.sleep(0.15)  # the first beat is written; the loop now waits for its next one
        presence._beat.wake()  # what Redis answering again does: the loop starts a round of Redis calls
        for _ in range(steps):
            await asyncio.sleep(0)
        await asyncio.wait_for(presence.stop(), 5)
    finally:
        await client.aclose()
