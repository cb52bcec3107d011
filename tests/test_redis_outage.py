"""A Redis outage (and restart) under the login limits and ``/healthz``: logins go on, never a 500.

With ``[cluster] redis_url`` set the failed-login counts live in Redis. While Redis does not answer
they are counted on each node instead (a guesser is still limited, per node), ``/healthz`` says 200
``degraded`` and, once Redis is back, the very first login is served through it again (redis-py's
pooled connections died with the old Redis process).

The tests that need Redis run their own ``redis-server`` on a free port and kill it with SIGKILL
(or pause it with SIGSTOP): the machine's Redis on 6379 is shared and never stopped. ``/healthz``
and the 503 answers are also checked over fake backends, which can hang or refuse on demand.
Clusters of two and three nodes on PostgreSQL go through an outage too: every message acknowledged
meanwhile reaches every member on every node, once and in id order.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any, AsyncIterator, Awaitable, Callable, cast

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from hq.addresses import AddressResolver
from hq.http.auth_routes import AuthRoutes
from hq.http.boundary import error_boundary
from hq.http.health import Health, HealthCheck
from hq.auth.limits import RedisLoginThrottle
from hq.cluster.redis import redis_client
from hq.store import StoreUnavailable

from .cluster import Cluster, start_cluster
from .services import PrivateRedis
from .sio import RecordingClient
from .support import PASSWORD, HQServer, make_server

# Several nodes, outages or worker processes: `make test` runs it, `make test-fast` does not.
pytestmark = pytest.mark.cluster

WINDOW = 60.0
ADDRESS = "192.0.2.7"


@pytest.fixture
def redis_server(private_redis: PrivateRedis) -> PrivateRedis:
    """A Redis of this test's own (conftest's ``private_redis``)."""
    return private_redis


ThrottleFactory = Callable[[], RedisLoginThrottle]


@pytest.fixture
async def throttles(redis_server: PrivateRedis) -> AsyncIterator[ThrottleFactory]:
    """Login limits as HQ builds them (same client options, 5 failures per codename), one per node."""
    prefix = f"hq-test-{uuid.uuid4().hex[:8]}:login-failures"
    clients = []

    def make() -> RedisLoginThrottle:
        clients.append(redis_client(redis_server.url))
        return RedisLoginThrottle(clients[-1], 5, 20, WINDOW, prefix=prefix)

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
def throttle(throttles: ThrottleFactory) -> RedisLoginThrottle:
    return throttles()


def _outage_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "hq.auth.limits" and r.levelno == logging.WARNING]


# RedisLoginThrottle against a private Redis ---------------------------------------------------------

async def test_failures_are_counted_on_this_node_while_redis_is_down(
        throttles: ThrottleFactory, redis_server: PrivateRedis, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO, logger="hq.auth.limits")
    throttle, other_node = throttles(), throttles()
    monkeypatch.setattr(throttle.breaker, "pause", 0.0)  # ask Redis on every call: each must fall back
    await throttle.record_failure("fox", ADDRESS)  # in Redis: lost with it, as any shared count would be
    redis_server.kill()
    for _ in range(5):
        assert await throttle.retry_after("fox", ADDRESS) == 0
        await throttle.record_failure("fox", ADDRESS)
    assert 0 < await throttle.retry_after("fox", ADDRESS) <= WINDOW
    assert await throttle.retry_after("hank", ADDRESS) == 0
    assert len(_outage_warnings(caplog)) == 1, caplog.text  # one warning per outage, not per call

    redis_server.start()  # same port, empty
    # The outage's failures still count here after Redis returns; new ones go to Redis again.
    assert 0 < await throttle.retry_after("fox", ADDRESS) <= WINDOW
    assert "Redis answers again" in caplog.text
    for _ in range(5):
        await throttle.record_failure("hank", ADDRESS)
    assert await other_node.retry_after("hank", "198.51.100.1") > 0  # shared again
    assert await other_node.retry_after("fox", "198.51.100.1") == 0  # the outage's count was this node's
    await throttle.record_success("fox")  # the right password clears the codename everywhere
    assert await throttle.retry_after("fox", "198.51.100.1") == 0
    assert len(_outage_warnings(caplog)) == 1, caplog.text


async def test_a_restarted_redis_is_used_at_once(throttle: RedisLoginThrottle, redis_server: PrivateRedis,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """No call during the outage: the first one after it meets the dead pooled connection."""
    caplog.set_level(logging.INFO, logger="hq.auth.limits")
    await throttle.record_failure("fox", ADDRESS)
    assert await throttle.retry_after("fox", ADDRESS) == 0
    redis_server.kill()
    redis_server.start()
    for _ in range(5):
        await throttle.record_failure("fox", ADDRESS)
    assert await throttle.retry_after("fox", ADDRESS) > 0
    assert _outage_warnings(caplog) == [], caplog.text  # the connection was replaced, not given up on


async def test_a_hung_redis_holds_one_login_for_half_a_second(throttle: RedisLoginThrottle,
                                                              redis_server: PrivateRedis) -> None:
    assert await throttle.retry_after("fox", ADDRESS) == 0
    redis_server.pause(True)  # connections stay open, nothing answers
    started = time.monotonic()
    assert await throttle.retry_after("fox", ADDRESS) == 0
    first = time.monotonic() - started
    started = time.monotonic()
    for _ in range(5):
        await throttle.record_failure("fox", ADDRESS)
    assert await throttle.retry_after("fox", ADDRESS) > 0
    rest = time.monotonic() - started
    assert first < 1.2 and rest < 0.1, (first, rest)  # then Redis is left alone for the breaker's pause
    redis_server.pause(False)


# /healthz, over fake backends -----------------------------------------------------------------------

async def _ok() -> None:
    return None


async def _refused() -> None:
    raise ConnectionRefusedError(111, "Connection refused")


async def _hangs() -> None:
    await asyncio.sleep(60)


async def _healthz(checks: list[HealthCheck]) -> tuple[int, dict[str, Any], float]:
    """Status, body and seconds taken of ``GET /healthz`` over these checks."""
    app = web.Application()
    app.add_routes(Health(checks).routes())
    async with TestClient(TestServer(app)) as client:
        started = time.monotonic()
        async with client.get("/healthz") as reply:
            return reply.status, await reply.json(), time.monotonic() - started


Probe = Callable[[], Awaitable[None]]


@pytest.mark.parametrize("database, redis, status, body", [
    (_ok, _ok, 200, {"status": "ok"}),
    (_ok, _refused, 200, {"status": "degraded", "degraded": ["redis"]}),
    (_ok, _hangs, 200, {"status": "degraded", "degraded": ["redis"]}),
    (_refused, _ok, 503, {"status": "unavailable", "down": ["database"]}),
    (_hangs, _hangs, 503, {"status": "unavailable", "down": ["database"], "degraded": ["redis"]}),
])
async def test_healthz_names_what_is_down_and_what_is_degraded(database: Probe, redis: Probe, status: int,
                                                                body: dict[str, Any]) -> None:
    checks = [HealthCheck("database", database), HealthCheck("redis", redis, required=False)]
    got_status, got_body, took = await _healthz(checks)
    assert (got_status, got_body) == (status, body)
    assert took < 1.5  # each backend at most 1 s, asked at once


class _StoreDown:
    """The session service while the database is down: every call raises what the store raises."""

    async def login(self, codename: str, password: str, address: str, otp: str | None = None) -> None:
        raise StoreUnavailable("connection refused by db.internal:5432")

    async def refresh(self, refresh_token: str, address: str) -> None:
        raise StoreUnavailable("connection refused by db.internal:5432")


@pytest.mark.parametrize("path, body", [("/api/auth/login", {"username": "fox", "password": PASSWORD}),
                                        ("/api/auth/refresh", {"refresh_token": "some-token"})])
async def test_login_and_refresh_answer_503_while_the_database_is_down(path: str, body: dict[str, str]) -> None:
    settings = SimpleNamespace(limits=SimpleNamespace(login_body_max_bytes=65536))
    api = AuthRoutes(cast(Any, settings), cast(Any, _StoreDown()), cast(Any, None), AddressResolver(()),
                     cast(Any, None))
    app = web.Application(middlewares=[error_boundary])
    app.add_routes(api.routes())
    async with TestClient(TestServer(app)) as client:
        async with client.post(path, json=body) as reply:
            assert reply.status == 503 and reply.headers["Retry-After"] == "1"
            answer = await reply.json()
    assert answer["error"]["code"] == "unavailable"
    assert "db.internal" not in answer["error"]["message"]  # the driver's words stay in the server


# A real HQ node (SQLite + a private Redis) ------------------------------------------------------------

class Node:
    """One HQ process over HTTP, remembering every status it answered."""

    def __init__(self, server: HQServer, http: aiohttp.ClientSession) -> None:
        self.server = server
        self.http = http
        self.statuses: list[int] = []

    async def post(self, path: str, body: dict[str, str]) -> tuple[int, dict[str, Any]]:
        started = time.monotonic()
        async with self.http.post(f"{self.server.url}{path}", json=body) as reply:
            self.statuses.append(reply.status)
            answer = await reply.json()
        assert time.monotonic() - started < 2, f"{path} took {time.monotonic() - started:.2f} s"
        return reply.status, answer

    async def login(self, codename: str, password: str = PASSWORD) -> tuple[int, dict[str, Any]]:
        return await self.post("/api/auth/login", {"username": codename, "password": password})

    async def healthz(self) -> tuple[int, dict[str, Any]]:
        async with self.http.get(f"{self.server.url}/healthz") as reply:
            self.statuses.append(reply.status)
            return reply.status, await reply.json()


@pytest.fixture
async def node(tmp_path: Path, redis_server: PrivateRedis) -> AsyncIterator[Node]:
    server = make_server(tmp_path / "hq", agents={"fox": "field-operative", "hank": "handler", "ana": "analyst"},
                         cluster={"redis_url": redis_server.url, "channel": f"hq-test-{uuid.uuid4().hex[:8]}"})
    server.start()
    async with aiohttp.ClientSession() as http:
        yield Node(server, http)
    server.stop()


async def test_logins_and_refreshes_go_on_through_a_redis_outage(node: Node, redis_server: PrivateRedis) -> None:
    status, pair = await node.login("ana")
    assert status == 200, pair
    assert await node.healthz() == (200, {"status": "ok"})

    redis_server.kill()
    assert await node.healthz() == (200, {"status": "degraded", "degraded": ["redis"]})
    assert (await node.login("hank"))[0] == 200
    status, pair = await node.post("/api/auth/refresh", {"refresh_token": pair["refresh_token"]})
    assert status == 200 and pair["agent"]["codename"] == "ana"
    for _ in range(5):
        status, answer = await node.login("fox", "a wrong password, again")
        assert (status, answer["error"]["code"]) == (401, "invalid_credentials")
    status, answer = await node.login("fox")  # the right password, but limited: on this node
    assert (status, answer["error"]["code"]) == (429, "too_many_attempts")
    assert (await node.login("hank", "one wrong password"))[0] == 401
    assert await node.healthz() == (200, {"status": "degraded", "degraded": ["redis"]})

    redis_server.start()  # same port, empty
    status, pair = await node.login("hank")
    assert status == 200, pair  # the first login after Redis returned
    assert (await node.post("/api/auth/refresh", {"refresh_token": pair["refresh_token"]}))[0] == 200
    assert await node.healthz() == (200, {"status": "ok"})
    assert (await node.login("fox"))[0] == 429  # the outage's failures still count here
    # Counted in Redis again (after PROBE_INTERVAL at most): a failure shows up there.
    deadline = time.monotonic() + 5
    for attempt in range(100):
        assert (await node.login(f"ghost{attempt}", "wrong"))[0] == 401
        if await _redis_has_failures_of(redis_server, f"ghost{attempt}"):
            break
        assert time.monotonic() < deadline, "login failures are not counted in Redis again"
        await asyncio.sleep(0.25)

    assert 500 not in node.statuses, node.statuses
    log = node.server.log_path.read_text()
    assert "Traceback" not in log and " ERROR " not in log, log
    assert log.count("login limits: Redis does not answer") == 1, log
    assert "login limits: Redis answers again" in log
    assert log.count("health check: redis does not answer") == 1, log


async def test_the_first_login_after_a_redis_restart_succeeds(node: Node, redis_server: PrivateRedis) -> None:
    """Nothing asks Redis during the outage: the next login meets the connections the old Redis closed."""
    for codename in ("fox", "hank", "ana"):
        assert (await node.login(codename))[0] == 200
    redis_server.kill()
    redis_server.start()
    assert (await node.login("fox"))[0] == 200
    assert (await node.login("hank", "wrong"))[0] == 401
    assert await _redis_has_failures_of(redis_server, "hank")
    assert await node.healthz() == (200, {"status": "ok"})
    assert 500 not in node.statuses, node.statuses
    log = node.server.log_path.read_text()
    assert "Traceback" not in log and "login limits: Redis does not answer" not in log, log


async def _redis_has_failures_of(redis_server: PrivateRedis, codename: str) -> bool:
    client = redis_client(redis_server.url)
    try:
        return bool(await client.keys(f"*:login-failures:codename:{codename}"))
    finally:
        await client.aclose()


async def test_a_node_starts_and_serves_while_redis_is_down(tmp_path: Path) -> None:
    redis_server = PrivateRedis(tmp_path)  # its port, nothing listening yet
    server = make_server(tmp_path / "hq", agents={"fox": "field-operative"},
                         cluster={"redis_url": redis_server.url, "channel": f"hq-test-{uuid.uuid4().hex[:8]}"})
    try:
        server.start()  # waits for /healthz to answer 200: degraded is serving
        async with aiohttp.ClientSession() as http:
            node = Node(server, http)
            assert await node.healthz() == (200, {"status": "degraded", "degraded": ["redis"]})
            assert (await node.login("fox"))[0] == 200
            redis_server.start()
            deadline = time.monotonic() + 5
            while await node.healthz() != (200, {"status": "ok"}):
                assert time.monotonic() < deadline, "/healthz did not say ok once Redis was there"
                await asyncio.sleep(0.1)
            assert (await node.login("fox"))[0] == 200
            assert 500 not in node.statuses, node.statuses
        assert "Traceback" not in server.log_path.read_text()
    finally:
        server.stop()
        redis_server.kill()


# A cluster (PostgreSQL and a private Redis) ---------------------------------------------------------

@pytest.fixture(params=[2, 3], ids=["2-nodes", "3-nodes"])
async def cluster(request: pytest.FixtureRequest, tmp_path: Path, redis_server: PrivateRedis) -> AsyncIterator[Cluster]:
    async with start_cluster(tmp_path, request.param, redis_server.url) as started:
        yield started


async def _all_say(nodes: list[Node], expected: tuple[int, dict[str, Any]], timeout: float = 10) -> None:
    """Wait until ``/healthz`` of every node answers ``expected``."""
    deadline = time.monotonic() + timeout
    while [await node.healthz() for node in nodes] != [expected] * len(nodes):
        assert time.monotonic() < deadline, f"/healthz did not answer {expected} on every node"
        await asyncio.sleep(0.1)


async def test_a_cluster_loses_nothing_acknowledged_through_a_redis_outage(
        cluster: Cluster, redis_server: PrivateRedis) -> None:
    first, last = cluster[0], cluster[-1]
    members = [await RecordingClient().connect(node.url, node.login("fox")["access_token"]) for node in cluster]
    for member in members:
        assert (await member.call("join", {"channel": "missions"}))["ok"]
    # Senders on the first and the last node: messages stored on different nodes, interleaved.
    senders = [await RecordingClient().connect(first.url, first.login("hank")["access_token"]),
               await RecordingClient().connect(last.url, last.login("dora")["access_token"])]

    async def say(n: int, text: str) -> int:
        started = time.monotonic()
        ack = await senders[n % 2].call("message", {"channel": "missions", "text": text})
        assert ack["ok"] is True, ack
        assert time.monotonic() - started < 3  # an ack never waits long for a Redis that is gone
        return int(ack["id"])

    async def everyone_received(ids: list[int]) -> None:
        for member in members:
            await member.wait_for("message", count=len(ids), timeout=10)
        await asyncio.sleep(0.3)  # a duplicate arriving late would show up here
        for member in members:
            assert [m["id"] for m in member.received("message")] == ids  # in order, none missed or twice

    async with aiohttp.ClientSession() as http:
        nodes = [Node(server, http) for server in cluster]
        acked = [await say(0, "before")]
        await everyone_received(acked)

        redis_server.kill()
        await _all_say(nodes, (200, {"status": "degraded", "degraded": ["redis"]}))
        for node in nodes:  # logins go on, on every node
            status, answer = await node.login("ana")
            assert status == 200, answer
        acked += [await say(n, f"during {n}") for n in range(10)]
        await everyone_received(acked)  # from the store (the sequencer's catch-up), within about a second
        assert all(client.sio.connected for client in members + senders)

        redis_server.start()  # same port, empty
        await _all_say(nodes, (200, {"status": "ok"}))
        acked += [await say(n, f"after {n}") for n in range(6)]
        await everyone_received(acked)
        assert acked == list(range(1, 18))
        for node in nodes:
            assert (await node.login("ana"))[0] == 200
        assert all(500 not in node.statuses for node in nodes), [node.statuses for node in nodes]
    for client in members + senders:
        await client.close()
    cluster.assert_clean_logs()
