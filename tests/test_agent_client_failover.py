"""agent_client over several HQ nodes: a SIGKILLed node is left for the next one without losing,
repeating or reordering a message; a node that is down, or answers 502/503, is skipped at the
start; a 4xx is never retried elsewhere; the CLI takes several ``--url`` values or a list in
``$HQ_URL``.

The cluster is two or three real HQ processes (tests/cluster.py) on one fresh PostgreSQL database and
the machine's Redis, so a message stored through any node is in every history. Only HQ processes are
ever killed: with three nodes, the first and then the second, so the client fails over twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from agent_client import AgentClient, LoginFailed, Message, RateLimited
from agent_client.nodes import parse_urls

from .cluster import Cluster, start_cluster
from .services import REDIS_URL, ensure_redis
from .support import PASSWORD, ROOT, HQServer, free_port
from .test_agent_client import wait_until
from .test_agent_client_cli import agent_env, run_agent

# Several nodes, outages or worker processes: `make test` runs it, `make test-fast` does not.
pytestmark = pytest.mark.cluster

StartCluster = Callable[..., Awaitable[Cluster]]
SHORT_TOKENS = {"access_ttl": 3, "expiry_warning": 1}


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[StartCluster]:
    """``await cluster(nodes=2, auth={...})``: HQ nodes sharing a fresh database and the machine's Redis;
    stopped afterwards."""
    async with contextlib.AsyncExitStack() as stack:
        started: list[Cluster] = []

        async def start(nodes: int = 2, auth: dict[str, Any] | None = None) -> Cluster:
            ensure_redis()
            started.append(await stack.enter_async_context(
                start_cluster(tmp_path / f"cluster{len(started)}", nodes, REDIS_URL, auth=auth or {})))
            return started[-1]

        yield start


def dead_url() -> str:
    """The URL of a node that is down: nothing listens on the port."""
    return f"http://127.0.0.1:{free_port()}"


async def keep_sending(sender: AgentClient, acked: list[int], stop: asyncio.Event) -> None:
    """Send to #missions every 0.1 s (HQ allows 20 events a second) until ``stop`` is set."""
    n = 0
    while not stop.is_set():
        try:
            acked.append(await sender.send("missions", f"tick {n}"))
            n += 1
        except RateLimited:  # not processed by HQ: safe to send again
            pass
        await asyncio.sleep(0.1)


# the node in use dies ------------------------------------------------------------------------------
# Short tokens (a refresh due after the crash, so through another node) need no third node to be tested.
@pytest.mark.parametrize("nodes, auth", [(2, {}), (2, SHORT_TOKENS), (3, {})],
                         ids=["2-nodes", "2-nodes-3s-tokens", "3-nodes"])
async def test_sigkilled_node_is_left_for_the_next_without_losing_or_repeating(
        cluster: StartCluster, nodes: int, auth: dict[str, Any]) -> None:
    """Every node but the last is killed in turn while in use; the client ends up on the last one."""
    started = await cluster(nodes, auth)
    dora = AgentClient(started.urls, backoff_initial=0.1, backoff_max=1.0)
    hank = AgentClient(started[-1].url)  # the sender only ever uses the node that stays up
    stop = asyncio.Event()
    try:
        await dora.login("dora", PASSWORD)
        await dora.connect(["missions"])
        assert dora.url == started[0].url
        received: list[Message] = []
        dora.on_message(received.append)
        await hank.login("hank", PASSWORD)
        await hank.connect()
        acked: list[int] = []
        sender = asyncio.create_task(keep_sending(hank, acked, stop))
        await wait_until(lambda: len(received) >= 15, what="live messages across nodes")

        failed_over_in = []
        for crashed, following in zip(started.nodes, started.nodes[1:]):
            crashed.stop(signal.SIGKILL)
            killed_at = time.monotonic()
            await wait_until(lambda: dora.connected and dora.url == following.url, timeout=15,
                             what=f"the failover to {following.url}")
            failed_over_in.append(time.monotonic() - killed_at)
            seen = len(received)
            await wait_until(lambda: len(received) >= seen + 5, what="live messages on the next node")
        own = await dora.send("missions", "dora, through the last node")  # sends go on through the new node
        await asyncio.sleep(2.5 if auth else 1.0)  # with 3 s tokens, a refresh is due after the crash
        stop.set()
        await sender

        stored = [m.id for m in await hank.history("missions", after_id=0, limit=500)]
        assert stored == list(range(1, len(stored) + 1)) and own in stored
        assert set(acked) | {own} == set(stored)
        await wait_until(lambda: len(received) >= len(stored), timeout=15, what="dora to catch up")
        await asyncio.sleep(0.3)  # a duplicate arriving late would show up here
        # Exactly once, in id order, nothing missing: the stream is the channel's history.
        assert [m.id for m in received] == stored
        assert next(m.text for m in received if m.id == own) == "dora, through the last node"
        assert dora.error is None and dora.stats.failovers >= nodes - 1
        assert (dora.stats.disconnects, dora.stats.connects) == (nodes - 1, nodes)
        if auth:
            assert dora.refreshes >= 1  # the nodes that issued the tokens were dead: the refresh went elsewhere
        print(f"\n[failover figures, {nodes} nodes, {auth or 'default tokens'}] node killed -> client joined on "
              f"the next in {', '.join(f'{t:.2f}' for t in failed_over_in)} s; messages stored {len(stored)}, "
              f"delivered {len(received)}, recovered from history {dora.stats.recovered}, duplicates dropped "
              f"{dora.stats.duplicates_dropped}, token refreshes {dora.refreshes}")
    finally:
        stop.set()
        await dora.close()
        await hank.close()


# the first node is down at the start ---------------------------------------------------------------
async def test_a_first_node_that_is_down_is_skipped_at_login_and_connect(hq: HQServer) -> None:
    down = dead_url()
    async with AgentClient([down, hq.url]) as dora:
        agent = await dora.login("dora", PASSWORD)  # HTTP: connection refused, then the next node
        assert agent.codename == "dora"
        await dora.connect(["missions"])
        assert dora.connected and dora.url == hq.url and dora.urls == (down, hq.url)
        message_id = await dora.send("missions", "through the second node")
        got = await asyncio.wait_for(dora.__anext__(), 10)
        assert (got.id, got.text) == (message_id, "through the second node")
        assert dora.stats.connects == 1 and dora.stats.failovers == 1


class FakeNode:
    """An HTTP server on a free port that answers every request with one fixed status and body."""

    def __init__(self, status: int, body: Any = None) -> None:
        self.port = 0  # the kernel's pick, known once entered
        self.requests = 0
        self._status, self._body = status, body
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _answer(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self._body is None:  # what a proxy says when its upstream is gone
            return web.Response(status=self._status, text="<html>Bad Gateway</html>", content_type="text/html")
        return web.json_response(self._body, status=self._status)

    async def __aenter__(self) -> "FakeNode":
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


@pytest.mark.parametrize("status, body", [
    (502, None),
    (503, None),
    (503, {"error": {"code": "unavailable", "message": "the database is down"}}),
], ids=["502-proxy", "503-proxy", "503-unavailable"])
async def test_a_node_answering_502_or_503_is_skipped(shared_hq: HQServer, status: int, body: Any) -> None:
    async with FakeNode(status, body) as sick, AgentClient([sick.url, shared_hq.url]) as fox:
        assert (await fox.login("fox", PASSWORD)).codename == "fox"
        assert sick.requests == 1
        await fox.connect(["missions"])  # the socket follows the node that answered
        assert fox.url == shared_hq.url


async def test_a_refusal_is_never_retried_on_another_node(shared_hq: HQServer) -> None:
    refusal = {"error": {"code": "invalid_credentials", "message": "wrong codename or password"}}
    async with FakeNode(401, refusal) as first, AgentClient([first.url, shared_hq.url]) as fox:
        with pytest.raises(LoginFailed):
            await fox.login("fox", PASSWORD)  # the right password for the second node: never tried
        assert first.requests == 1 and fox.agent is None


def test_url_lists_are_parsed_once_each() -> None:
    assert parse_urls("http://a:1/") == ("http://a:1",)
    assert parse_urls(" http://a:1 , http://b:2/,,http://a:1") == ("http://a:1", "http://b:2")
    assert parse_urls(["http://a:1", "http://b:2,http://c:3"]) == ("http://a:1", "http://b:2", "http://c:3")
    for empty in ("", " , ", []):
        with pytest.raises(ValueError):
            parse_urls(empty)


# the command line ----------------------------------------------------------------------------------
def test_cli_takes_several_urls_and_a_list_in_hq_url(shared_hq: HQServer) -> None:
    down = dead_url()
    sent = run_agent(down, "--url", shared_hq.url, "send", "missions", "two --url values")
    assert sent.returncode == 0, sent.stderr
    message_id = int(sent.stdout)
    listed = subprocess.run([sys.executable, "-m", "agent_client", "--codename", "fox", "history", "missions",
                             "--after", str(message_id - 1)], capture_output=True, text=True, timeout=60,
                            cwd=ROOT, start_new_session=True,
                            env=agent_env(HQ_URL=f"{dead_url()}, {shared_hq.url}", AGENT_PASSWORD=PASSWORD))
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == f"#missions {message_id} hank: two --url values\n"
    # Every node down: one error line, as with one URL.
    failed = run_agent(dead_url(), "--url", dead_url(), "login")
    assert failed.returncode == 1 and failed.stderr.startswith("error: unavailable"), failed.stderr


async def test_cli_listener_fails_over_when_its_node_is_killed(cluster: StartCluster) -> None:
    a, b = await cluster()
    listener = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent_client", "--url", a.url, "--url", b.url, "--codename", "fox", "--json",
        "listen", "missions", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        env=agent_env(AGENT_PASSWORD=PASSWORD), start_new_session=True)
    hank = AgentClient(b.url)
    try:
        assert listener.stdout is not None and listener.stderr is not None
        status = await asyncio.wait_for(listener.stderr.readline(), 30)
        assert status.decode().startswith("listening to #missions"), status
        await hank.login("hank", PASSWORD)
        await hank.connect()
        lines: list[dict[str, Any]] = []

        async def read(count: int) -> None:
            while len(lines) < count:
                lines.append(json.loads(await listener.stdout.readline()))  # type: ignore[union-attr]

        before = [await hank.send("missions", f"before {n}") for n in range(5)]
        await asyncio.wait_for(read(5), 15)
        a.stop(signal.SIGKILL)
        after = [await hank.send("missions", f"after {n}") for n in range(10)]
        await asyncio.wait_for(read(15), 20)
        assert [line["id"] for line in lines] == before + after == list(range(1, 16))
        listener.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(listener.wait(), 15) == 0
        assert await asyncio.wait_for(listener.stdout.read(), 5) == b""  # nothing twice
    finally:
        await hank.close()
        if listener.returncode is None:
            listener.kill()
            await listener.wait()
