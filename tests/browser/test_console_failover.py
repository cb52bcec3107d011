"""The console behind a load balancer in front of two HQ nodes: its node dies, it carries on.

Real headless Chromium loads the console through a TCP round-robin balancer (tests/proxy.py: layer
4, no sticky sessions, dead nodes skipped) in front of two HQ nodes on one PostgreSQL database and
the machine's Redis. The node holding the console's websocket is SIGKILLed; the page reconnects
through the balancer to the other node by itself (no reload), says so in its status, shows what
was sent while it was away (from history) and then live messages, each once and in order.
"""

from __future__ import annotations

import contextlib
import re
import signal
from pathlib import Path
from typing import AsyncIterator

import pytest
from playwright.async_api import Browser, expect

from ..cluster import Cluster, start_cluster
from ..proxy import RoundRobinProxy
from ..services import REDIS_URL, ensure_redis
from ..sio import RecordingClient
from ..support import HQServer
from .console_page import ARTIFACTS, WAIT_MS, Console


@pytest.fixture
async def balanced(tmp_path: Path) -> AsyncIterator[tuple[RoundRobinProxy, Cluster]]:
    """Two nodes and a balancer in front of them; the nodes accept the balancer's origin only."""
    ensure_redis()
    # The balancer listens first (on a port of its own choosing), so the nodes can name its origin.
    proxy = await RoundRobinProxy(0, []).start()
    try:
        origin = f"http://127.0.0.1:{proxy.port}"
        async with start_cluster(tmp_path, 2, REDIS_URL, server={"allowed_origins": [origin]}) as cluster:
            proxy.upstreams = [("127.0.0.1", node.port) for node in cluster]
            yield proxy, cluster
            cluster.assert_clean_logs()
    finally:
        await proxy.close()


async def _say(node: HQServer, text: str) -> int:
    """``hank`` sends ``text`` to #missions through ``node`` directly (not through the balancer)."""
    hank = await RecordingClient().connect(node.url, node.login("hank")["access_token"], transports=["websocket"])
    try:
        ack = await hank.call("message", {"channel": "missions", "text": text})
        assert ack["ok"], ack
        return int(ack["id"])
    finally:
        await hank.close()


async def test_the_console_reconnects_through_the_balancer_when_its_node_is_killed(
        browser: Browser, balanced: tuple[RoundRobinProxy, Cluster]) -> None:
    proxy, cluster = balanced
    context = await browser.new_context(viewport={"width": 1100, "height": 720})
    context.set_default_timeout(WAIT_MS)
    console = Console(await context.new_page(), proxy.url)
    try:
        await console.open()
        await console.log_in("fox")
        assert await console.status.text_content() == "Connected as fox"
        [websocket] = proxy.open_websockets()
        serving, other = cluster[websocket.upstream], cluster[1 - websocket.upstream]

        await _say(other, "Before the crash")  # stored on the other node: reaches the console across nodes
        await console.expect_message("hank", "Before the crash")

        proxy.hold()  # the balancer is slow to find a live node: the page stays away while we send
        serving.stop(signal.SIGKILL)
        await expect(console.status).to_have_text(re.compile(r"^Reconnecting"))
        meanwhile = [await _say(other, f"While away {n}") for n in range(3)]
        proxy.release()

        await console.wait_connected()
        assert await console.status.text_content() == "Connected as fox"
        [websocket] = proxy.open_websockets()
        assert cluster[websocket.upstream] is other  # the dead node was skipped
        for n in range(3):  # caught up from history
            await console.expect_message("hank", f"While away {n}")
        live = await _say(other, "Live again")
        await console.expect_message("hank", "Live again")
        assert await console.feed_texts() == ["Before the crash", "While away 0", "While away 1", "While away 2",
                                              "Live again"]  # each once, in order
        assert (meanwhile, live) == ([2, 3, 4], 5)
        assert await console.same_document()  # no reload
        await console.send("Fox still here", to="hq")  # and it sends through the node that is left
        assert not console.errors, console.errors
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        with contextlib.suppress(Exception):  # a screenshot is for reading a failure, never its cause
            await console.page.screenshot(path=str(ARTIFACTS / "console-failover.png"))
        await context.close()
