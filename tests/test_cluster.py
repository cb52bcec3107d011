"""Two HQ nodes sharing PostgreSQL and Redis: broadcasts, revocations and login limits cross nodes."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import AsyncIterator

import pytest

from .cluster import Cluster, start_cluster
from .services import REDIS_URL, ensure_redis
from .sio import RecordingClient
from .support import make_server

# Several nodes, outages or worker processes: `make test` runs it, `make test-fast` does not.
pytestmark = pytest.mark.cluster


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """Two nodes on a fresh database and the machine's Redis."""
    ensure_redis()
    async with start_cluster(tmp_path, 2, REDIS_URL) as started:
        yield started


async def test_message_sent_on_one_node_reaches_members_on_the_other(cluster: Cluster) -> None:
    a, b = cluster
    fox = await RecordingClient().connect(a.url, a.login("fox")["access_token"])
    assert (await fox.call("join", {"channel": "missions"}))["ok"]
    hank = await RecordingClient().connect(b.url, b.login("hank")["access_token"])
    ack = await hank.call("message", {"channel": "missions", "text": "across nodes"})
    assert ack == {"ok": True, "id": 1}
    received = await fox.wait_for("message")
    assert received[0]["text"] == "across nodes" and received[0]["from"] == "hank"
    history = await fox.call("history", {"channel": "missions"})
    assert [m["id"] for m in history["messages"]] == [1]
    await fox.close()
    await hank.close()


async def test_logout_on_one_node_ends_the_socket_on_the_other(cluster: Cluster) -> None:
    a, b = cluster
    pair = a.login("fox")
    fox = await RecordingClient().connect(a.url, pair["access_token"])
    request = urllib.request.Request(f"{b.url}/api/auth/logout", method="POST",
                                     headers={"Authorization": f"Bearer {pair['access_token']}"})
    started = time.monotonic()
    urllib.request.urlopen(request).close()
    assert (await fox.wait_for("session_ended"))[0] == {"reason": "logged_out"}
    print(f"logout on node B -> socket on node A ended in {1000 * (await fox.wait_disconnected() - started):.0f} ms")


async def test_login_failures_are_counted_across_nodes(cluster: Cluster) -> None:
    a, b = cluster
    for _ in range(5):
        with pytest.raises(urllib.error.HTTPError) as failure:
            a.login("fox", "wrong password, definitely")
        assert failure.value.code == 401
    with pytest.raises(urllib.error.HTTPError) as limited:
        b.login("fox")
    assert limited.value.code == 429 and int(limited.value.headers["Retry-After"]) > 0
    assert json.loads(limited.value.read())["error"]["code"] == "too_many_attempts"


async def test_healthz_reports_a_missing_backend(tmp_path: Path) -> None:
    # Redis is not required: HQ serves without it, degraded (tests/test_redis_outage.py has the rest).
    server = make_server(tmp_path / "n", cluster={"redis_url": "redis://127.0.0.1:1/0"}).start()
    with urllib.request.urlopen(f"{server.url}/healthz", timeout=5) as response:
        assert response.status == 200
        assert json.loads(response.read()) == {"status": "degraded", "degraded": ["redis"]}
    server.stop()
