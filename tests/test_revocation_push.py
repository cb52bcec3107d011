"""Revocations pushed over Redis pub/sub: two HQ nodes on one PostgreSQL database and one Redis.

The nodes read the store's revocation feed only every 2 s (16 s while the push is subscribed), so a
socket ended well within a second can only have been ended by the push. The outage test runs its
own ``redis-server`` on a free port (the machine's Redis on 6379 is shared and never stopped).
The figures printed (``-s``) are the ones docs/scaling.md quotes.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from hq.cluster.revocation import RevocationWatcher
from hq.store import Revocation

from .cluster import Cluster, start_cluster
from .services import REDIS_URL, PrivateRedis, ensure_redis
from .sio import RecordingClient
from .support import HQServer, free_port, make_server

# Several nodes, outages or worker processes: `make test` runs it, `make test-fast` does not.
pytestmark = pytest.mark.cluster

POLL = 2.0  # [storage] revocation_poll: far slower than what the push must achieve
FAST = 1.0  # what "at once" is asserted as; the figures printed are what docs/scaling.md quotes


ClusterFactory = Callable[..., Awaitable[Cluster]]


@pytest.fixture
async def make_cluster(tmp_path: Path) -> AsyncIterator[ClusterFactory]:
    """``await make_cluster(redis_url, poll, nodes)``: two (or three) nodes on a fresh database and the given
    Redis, every one subscribed to the push; stopped and dropped afterwards."""
    async with contextlib.AsyncExitStack() as stack:
        made: list[Cluster] = []

        async def make(redis_url: str, poll: float = POLL, nodes: int = 2) -> Cluster:
            made.append(await stack.enter_async_context(
                start_cluster(tmp_path / f"cluster{len(made)}", nodes, redis_url, storage={"revocation_poll": poll})))
            await made[-1].wait_subscribed()
            return made[-1]

        yield make


@pytest.fixture
async def shared_redis_cluster(make_cluster: ClusterFactory) -> Cluster:
    """Two nodes on the machine's Redis."""
    ensure_redis()
    return await make_cluster(REDIS_URL)


async def _logout(node: HQServer, token: str) -> int:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{node.url}/api/auth/logout", headers={"Authorization": f"Bearer {token}"}) as reply:
            return reply.status


def _ended_at(client: RecordingClient) -> float:
    return next(at for name, _, at in client.events if name == "session_ended")


async def _cross_node_logout(origin: HQServer, other: HQServer, token: str | None = None) -> float:
    """Connect to ``other``, log out on ``origin``: seconds until ``other`` ended the socket.

    Without a ``token``, a new session is opened on ``origin`` first.
    """
    token = token or origin.login("fox")["access_token"]
    client = await RecordingClient().connect(other.url, token)
    try:
        started = time.monotonic()
        assert await _logout(origin, token) == 204
        assert (await client.wait_for("session_ended", timeout=3 * POLL))[0] == {"reason": "logged_out"}
        return _ended_at(client) - started
    finally:
        await client.close()


def _figures(delays: list[float]) -> str:
    ms = sorted(1000 * d for d in delays)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return (f"n={len(ms)} p50={statistics.median(ms):.1f} ms p99={p99:.1f} ms max={ms[-1]:.1f} ms "
            f"min={ms[0]:.1f} ms")


async def test_logout_on_one_node_ends_the_socket_on_the_other_at_once(shared_redis_cluster: Cluster) -> None:
    a, b = shared_redis_cluster[0], shared_redis_cluster[1]
    delays = []
    for i in range(30):
        origin, other = (a, b) if i % 2 == 0 else (b, a)
        delays.append(await _cross_node_logout(origin, other))
    print(f"\nlogout on one node -> session_ended on the other (revocation_poll {POLL} s): {_figures(delays)}")
    assert max(delays) < FAST, _figures(delays)


async def test_logout_on_one_of_three_nodes_ends_the_sockets_on_the_two_others_at_once(
        private_redis: PrivateRedis, make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster(private_redis.url, nodes=3)
    nodes = cluster.nodes
    delays = []
    for i in range(12):
        origin = nodes[i % 3]
        others = [node for node in nodes if node is not origin]
        token = origin.login("fox")["access_token"]
        clients = [await RecordingClient().connect(node.url, token) for node in others]
        try:
            started = time.monotonic()
            assert await _logout(origin, token) == 204
            for client in clients:
                assert (await client.wait_for("session_ended", timeout=3 * POLL))[0] == {"reason": "logged_out"}
                delays.append(_ended_at(client) - started)
        finally:
            for client in clients:
                await client.close()
    print(f"\nthree nodes: logout on one -> session_ended on each of the two others "
          f"(revocation_poll {POLL} s): {_figures(delays)}")
    assert max(delays) < FAST, _figures(delays)


async def test_cli_disable_ends_sockets_on_both_nodes_at_once(shared_redis_cluster: Cluster) -> None:
    a, b = shared_redis_cluster[0], shared_redis_cluster[1]
    on_a = await RecordingClient().connect(a.url, a.login("fox")["access_token"])
    on_b = await RecordingClient().connect(b.url, b.login("fox")["access_token"])
    hank = await RecordingClient().connect(b.url, b.login("hank")["access_token"])
    # Not subprocess.run: the event loop must keep recording the sockets' events while the CLI runs.
    cli = await asyncio.create_subprocess_exec(sys.executable, "-m", "hq", "agents", "disable", "fox",
                                               "--config", str(a.config), cwd=a.workdir,
                                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await cli.communicate()
    assert cli.returncode == 0, err
    assert err == b"", err  # no warning: Redis was there
    for client in (on_a, on_b):
        assert (await client.wait_for("session_ended", timeout=3 * POLL))[0] == {"reason": "agent_disabled"}
    # From the CLI's own audit line (it shares node A's audit file) to each socket's session_ended.
    revoked = [line for line in a.audit_lines() if line["event"] == "session_revoked" and line["codename"] == "fox"]
    at = datetime.fromisoformat(revoked[-1]["ts"].replace("Z", "+00:00")).timestamp()
    offset = time.time() - time.monotonic()
    delays = [_ended_at(client) + offset - at for client in (on_a, on_b)]
    print(f"\nagents disable (CLI) -> session_ended on node A {1000 * delays[0]:.0f} ms, "
          f"on node B {1000 * delays[1]:.0f} ms after the CLI's audit line (ms resolution)")
    assert max(delays) < FAST
    assert hank.sio.connected and not hank.received("session_ended")
    await hank.close()


async def test_a_revocation_is_applied_once(make_cluster: ClusterFactory) -> None:
    """The feed's copy of an agent-wide revocation must not end a session opened after the push."""
    ensure_redis()
    poll = 0.5  # the feed is then read every 4 s while pushed, so the test can wait for the feed's copy
    cluster = await make_cluster(REDIS_URL, poll)
    a, b = cluster[0], cluster[1]
    old = await RecordingClient().connect(b.url, a.login("fox")["access_token"])
    role = await asyncio.create_subprocess_exec(sys.executable, "-m", "hq", "agents", "role", "fox", "--role",
                                                "field-operative", "--config", str(a.config), cwd=a.workdir,
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert await role.wait() == 0
    assert (await old.wait_for("session_ended", timeout=FAST))[0] == {"reason": "revoked"}
    # A session opened right after, most likely before B reads the same revocation from its feed
    # (within 8 polls while pushed); after that the new socket must still be there.
    new = await RecordingClient().connect(b.url, a.login("fox")["access_token"])
    await asyncio.sleep(8 * poll + 1)
    assert new.sio.connected and not new.received("session_ended"), new.events
    await new.close()


@pytest.mark.parametrize("nodes", [2, 3], ids=["2-nodes", "3-nodes"])
async def test_redis_outage_falls_back_to_the_feed_and_push_resumes(private_redis: PrivateRedis,
                                                                    make_cluster: ClusterFactory, nodes: int) -> None:
    cluster = await make_cluster(private_redis.url, nodes=nodes)
    a, others = cluster[0], cluster.nodes[1:]
    before = [await _cross_node_logout(a, others[i % len(others)]) for i in range(3)]
    assert max(before) < FAST, _figures(before)

    # Every session is opened while Redis is up: login needs Redis for its shared failure counts.
    tokens = [a.login("fox")["access_token"] for _ in range(8)]
    during, after = tokens[:2], tokens[2:]
    clients = [[await RecordingClient().connect(other.url, token) for other in others] for token in during]
    private_redis.kill()
    await asyncio.sleep(0.5)
    outage = []
    for token, on_others in zip(during, clients):
        started = time.monotonic()
        assert await _logout(a, token) == 204  # never a 500, and not held up by the missing Redis
        answered = time.monotonic() - started
        assert answered < 1.5, f"logout took {answered:.2f} s with Redis down"
        for client in on_others:  # every other node reads it from the feed
            assert (await client.wait_for("session_ended", timeout=3 * POLL))[0] == {"reason": "logged_out"}
            outage.append(_ended_at(client) - started)
            await client.close()
    print(f"\n{nodes} nodes, with Redis down, from the feed (revocation_poll {POLL} s): {_figures(outage)}")
    assert max(outage) < POLL + 1

    private_redis.start()  # same port
    await cluster.wait_subscribed()
    pairs = [(origin, other) for origin in cluster for other in cluster if other is not origin]
    back = [await _cross_node_logout(*pairs[i % len(pairs)], token) for i, token in enumerate(after)]
    print(f"after Redis returned: {_figures(back)}")
    assert max(back) < FAST, _figures(back)

    log_a = a.log_path.read_text()
    assert log_a.count("could not publish a revocation to Redis") == 1, log_a  # one warning per outage
    assert "publishing revocations to Redis again" in log_a
    for node in cluster:
        text = node.log_path.read_text()
        assert "revocation push from Redis unavailable" in text
        assert "ERROR hq." not in text, text


@pytest.mark.parametrize("nodes", [2, 3], ids=["2-nodes", "3-nodes"])
async def test_a_hung_redis_is_noticed_and_left_to_the_feed(private_redis: PrivateRedis,
                                                            make_cluster: ClusterFactory, nodes: int) -> None:
    cluster = await make_cluster(private_redis.url, nodes=nodes)
    a, others = cluster[0], cluster.nodes[1:]
    tokens = [a.login("fox")["access_token"] for _ in range(1 + len(others))]
    hung = [await RecordingClient().connect(other.url, tokens[0]) for other in others]
    private_redis.pause(True)
    try:
        started = time.monotonic()
        assert await _logout(a, tokens[0]) == 204
        answered = time.monotonic() - started
        assert answered < 2.5, f"logout took {answered:.2f} s with Redis hung"
        # Each other node notices the silence by its PING (within 2 x 5 s), then reads the feed every 2 s.
        for client in hung:
            assert (await client.wait_for("session_ended", timeout=15))[0] == {"reason": "logged_out"}
        print(f"\n{nodes} nodes, with Redis hung: logout answered in {1000 * answered:.0f} ms, the other nodes "
              f"ended the socket {', '.join(f'{_ended_at(c) - started:.1f}' for c in hung)} s after it")
        for client in hung:
            await client.close()
    finally:
        private_redis.pause(False)
    # Not wait_subscribed: the hung connections still count as subscribers until Redis reads their end.
    deadline = time.monotonic() + 15
    for other in others:
        while other.log_path.read_text().count("revocations are pushed through Redis") < 2:
            assert time.monotonic() < deadline, f"node {other.url} did not subscribe again"
            await asyncio.sleep(0.05)
    for other, token in zip(others, tokens[1:]):
        assert await _cross_node_logout(a, other, token) < FAST
        assert "no answer to PING" in other.log_path.read_text()


def test_cli_revokes_with_redis_down_and_says_so_once(tmp_path: Path) -> None:
    node = make_server(tmp_path / "n", agents={"fox": "field-operative"},
                       cluster={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    started = time.monotonic()
    result = node.cli("agents", "disable", "fox")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 10
    warnings = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and "could not publish a revocation to Redis" in warnings[0], result.stderr
    assert "disable: fox" in result.stdout


class _Feed:
    """The two store methods the watcher reads, over a list."""

    def __init__(self) -> None:
        self.entries: list[Revocation] = []

    def append(self, codename: str, sid: str | None, reason: str) -> None:
        self.entries.append(Revocation(len(self.entries) + 1, codename.lower(), sid, reason))

    async def last_revocation_id(self) -> int:
        return len(self.entries)

    async def revocations_after(self, cursor: int) -> list[Revocation]:
        return self.entries[cursor:]


async def test_the_feed_copy_of_a_revocation_applied_here_is_skipped_and_the_reverse() -> None:
    feed, applied = _Feed(), []

    async def end_sessions(codename: str, session_id: str | None, reason: str) -> int:
        applied.append((codename, session_id, reason))
        return 1

    watcher = RevocationWatcher(feed, end_sessions, interval=60)  # type: ignore[arg-type]
    # As SessionService does: the store first, then the listener; the feed is read afterwards.
    feed.append("Fox", None, "agent_disabled")
    await watcher.revoked_here("Fox", None, "agent_disabled")
    await watcher.poll()
    assert applied == [("Fox", None, "agent_disabled")]
    # The feed read between the store's write and the listener: applied by the feed, not again.
    feed.append("fox", "s1", "logged_out")
    await watcher.poll()
    await watcher.revoked_here("fox", "s1", "logged_out")
    assert applied[1:] == [("fox", "s1", "logged_out")]
    # The same agent-wide revocation again later is a new one, applied once more.
    feed.append("fox", None, "agent_disabled")
    await watcher.revoked_here("fox", None, "agent_disabled")
    await watcher.poll()
    assert applied[2:] == [("fox", None, "agent_disabled")]
