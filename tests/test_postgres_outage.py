"""PostgreSQL goes away under a running HQ: answers are ``unavailable`` in seconds, nothing acked is lost.

Every test runs against a PRIVATE PostgreSQL cluster made here with ``initdb`` and run with
``pg_ctl`` as the ``postgres`` user on a free port, so stopping, freezing or restarting it never
touches the machine's shared PostgreSQL on 5432. The store is tested in this process, then one HQ
node, then clusters of two and three nodes on it (and the machine's Redis, which is never stopped).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import asyncpg
import pytest

from hq.store import StoreUnavailable
from hq.store.postgres import OPERATION_TIMEOUT, PostgresStore

from .cluster import Cluster, start_cluster
from .services import REDIS_URL, PrivatePostgres, ensure_redis, private_postgres
from .sio import RecordingClient
from .support import PASSWORD, HQServer, free_port, make_server

# Several nodes, outages or worker processes: `make test` runs it, `make test-fast` does not.
pytestmark = pytest.mark.cluster

#: How late an ``unavailable`` may come: the store's budget plus scheduling slack.
ANSWER_WITHIN = OPERATION_TIMEOUT + 2.0
#: How long HQ may take to work again once the database is back.
RECOVER_WITHIN = 15.0


@pytest.fixture(scope="module")
def postgres() -> Iterator[PrivatePostgres]:
    with private_postgres() as cluster:
        yield cluster


@pytest.fixture
def running_postgres(postgres: PrivatePostgres) -> Iterator[PrivatePostgres]:
    """The private cluster, up and thawed at the start and at the end of the test."""
    postgres.thaw()
    if not postgres.running:
        postgres.start()
    yield postgres
    postgres.thaw()
    if not postgres.running:
        postgres.start()


@pytest.fixture
async def fresh_database(running_postgres: PrivatePostgres) -> AsyncIterator[str]:
    """An empty database on the private cluster; its URL."""
    name = f"hq_outage_{os.urandom(4).hex()}"
    admin = await asyncpg.connect(running_postgres.url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield running_postgres.url.rsplit("/", 1)[0] + f"/{name}"
    if running_postgres.running:
        admin = await asyncpg.connect(running_postgres.url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def _unavailable_in_time(operation: Awaitable[Any]) -> float:
    """Await ``operation``; it must raise StoreUnavailable within ANSWER_WITHIN. Returns the seconds."""
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as failure:
        await asyncio.wait_for(operation, ANSWER_WITHIN + 5)
    elapsed = time.monotonic() - started
    assert elapsed < ANSWER_WITHIN, f"StoreUnavailable after {elapsed:.1f}s"
    assert failure.value.code == "unavailable"
    return elapsed


async def _eventually(attempt: Callable[[], Awaitable[Any]], within: float = RECOVER_WITHIN) -> tuple[Any, int]:
    """Retry ``attempt`` while it raises StoreUnavailable; returns its result and the failures seen."""
    deadline = time.monotonic() + within
    failures = 0
    while True:
        try:
            return await attempt(), failures
        except StoreUnavailable:
            failures += 1
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def _every_store_operation(store: PostgresStore) -> list[Callable[[], Awaitable[Any]]]:
    now = time.time()
    return [
        store.ping,
        lambda: store.add_message("missions", "fox", "during", "2024-01-01T00:00:00.000Z"),
        lambda: store.history("missions", None, 10),
        lambda: store.last_message_id("missions"),
        lambda: store.get_agent("fox"),
        lambda: store.get_agent_and_session("fox", "sid"),
        lambda: store.create_session("sid-2", "fox"),
        lambda: store.rotate_refresh_token("old", "new", now + 60, now),
        lambda: store.revoke_sessions("fox", "logged_out", "sid"),
        lambda: store.revocations_after(0),
    ]


# the store, in this process ----------------------------------------------------------------------
async def test_store_answers_unavailable_while_the_database_is_down_and_recovers(
        postgres: PrivatePostgres, fresh_database: str) -> None:
    store = PostgresStore(fresh_database)
    await store.open()
    try:
        await store.add_agent("fox", "field-operative", "hash")
        await store.create_session("sid", "fox")
        acked = [(await store.add_message("missions", "fox", f"before {i}", "2024-01-01T00:00:00.000Z")).id
                 for i in range(3)]
        assert acked == [1, 2, 3]

        postgres.stop()  # a crash: no checkpoint, every connection cut
        for operation in _every_store_operation(store):
            await _unavailable_in_time(operation())

        postgres.start()
        message, _ = await _eventually(
            lambda: store.add_message("missions", "fox", "after", "2024-01-01T00:00:01.000Z"))
        assert message.id == 4, "an attempt made while the database was down used up an id"
        assert [m.id for m in await store.history("missions", None, 10)] == [1, 2, 3, 4]
        assert (await store.get_agent("fox")).codename == "fox"
    finally:
        await store.close()


async def test_a_crash_mid_batch_fails_every_caller_of_the_batch_and_the_next_batch_works(
        postgres: PrivatePostgres, fresh_database: str) -> None:
    # A long deadline: the batch waits on a row lock below, and only the crash may end that wait.
    store = PostgresStore(fresh_database, timeout=60)
    await store.open()
    holder = await asyncpg.connect(fresh_database)
    try:
        assert (await store.add_message("hq", "fox", "before", "2024-01-01T00:00:00.000Z")).id == 1
        # Hold the channel's counter row, so the next batch is in flight (its statement waits on the
        # server) when the database crashes.
        await holder.execute("BEGIN; SELECT last_id FROM channels WHERE name = 'hq' FOR UPDATE")
        in_flight = asyncio.gather(*(store.add_message("hq", "fox", f"lost {i}", "2024-01-01T00:00:01.000Z")
                                     for i in range(40)), return_exceptions=True)
        while not await holder.fetchval("SELECT count(*) FROM pg_stat_activity"
                                        " WHERE wait_event_type = 'Lock' AND datname = current_database()"):
            await asyncio.sleep(0.02)
        queued = asyncio.gather(*(store.add_message("hq", "fox", f"queued {i}", "2024-01-01T00:00:01.000Z")
                                  for i in range(10)), return_exceptions=True)
        await asyncio.sleep(0.05)
        # The first caller commits its batch itself (only its own message was pending then); every
        # later one, the ten below included, waits for the next batch while that one is in flight.
        assert store.queued_messages == 49, "the next batch accumulates while one is in flight"

        postgres.stop()  # a crash: the batch's statement is cut mid-way
        results = await asyncio.wait_for(asyncio.gather(in_flight, queued), ANSWER_WITHIN)
        assert all(isinstance(r, StoreUnavailable) for group in results for r in group), results

        postgres.start()
        message, _ = await _eventually(
            lambda: store.add_message("hq", "fox", "after", "2024-01-01T00:00:02.000Z"))
        assert message.id == 2, "the failed batch left a gap"
        assert [m.text for m in await store.history("hq", None, 100)] == ["before", "after"]
        burst = await asyncio.gather(*(store.add_message("hq", "fox", f"next {i}", "2024-01-01T00:00:03.000Z")
                                       for i in range(20)))
        assert [m.id for m in burst] == list(range(3, 23))
    finally:
        holder.terminate()
        await store.close()


async def test_store_replaces_connections_the_server_closed(
        postgres: PrivatePostgres, fresh_database: str) -> None:
    store = PostgresStore(fresh_database)
    await store.open()
    try:
        # Several pooled connections, then the server ends every one of them (as on a failover).
        await asyncio.gather(*(store.history("hq", None, 5) for _ in range(5)))
        admin = await asyncpg.connect(fresh_database)
        try:
            ended = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()")
        finally:
            await admin.close()
        assert ended >= 1
        await asyncio.sleep(0.2)
        for i in range(1, 11):
            message, failures = await _eventually(
                lambda: store.add_message("hq", "fox", f"after {i}", "2024-01-01T00:00:00.000Z"), within=5)
            assert message.id == i
            assert failures <= 1, "a closed connection should cost one answer at most"
    finally:
        await store.close()


async def test_a_frozen_database_is_unavailable_in_seconds_not_a_hang(
        postgres: PrivatePostgres, fresh_database: str) -> None:
    store = PostgresStore(fresh_database)
    await store.open()
    try:
        await store.add_message("hq", "fox", "before", "2024-01-01T00:00:00.000Z")
        postgres.freeze()  # connections stay open, nothing answers, new ones are never accepted
        try:
            for operation in _every_store_operation(store)[:4]:
                await _unavailable_in_time(operation())
            # Many at once: they wait for pooled connections, and still answer in time.
            started = time.monotonic()
            results = await asyncio.gather(*(store.last_message_id("hq") for _ in range(30)),
                                           return_exceptions=True)
            assert all(isinstance(r, StoreUnavailable) for r in results), results
            assert time.monotonic() - started < ANSWER_WITHIN
        finally:
            postgres.thaw()
        message, _ = await _eventually(lambda: store.add_message("hq", "fox", "after", "2024-01-01T00:00:01.000Z"))
        assert [m.text for m in await store.history("hq", None, 10)][0] == "before"
        assert message.id == len(await store.history("hq", None, 10))
    finally:
        await store.close()


async def test_open_says_unavailable_when_the_database_is_down() -> None:
    store = PostgresStore(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(store.open(), ANSWER_WITHIN)


# a real HQ node --------------------------------------------------------------------------------
def _login(server: HQServer, codename: str) -> tuple[int, dict[str, Any], float]:
    """POST /api/auth/login: status, JSON body and seconds taken (errors included, never raised)."""
    request = urllib.request.Request(f"{server.url}/api/auth/login", method="POST",
                                     data=json.dumps({"username": codename, "password": PASSWORD}).encode(),
                                     headers={"Content-Type": "application/json"})
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=ANSWER_WITHIN + 5) as response:
            return response.status, json.loads(response.read()), time.monotonic() - started
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), time.monotonic() - started


def _refresh(server: HQServer, refresh_token: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"{server.url}/api/auth/refresh", method="POST",
                                     data=json.dumps({"refresh_token": refresh_token}).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=ANSWER_WITHIN + 5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _bearer(server: HQServer, method: str, path: str, access_token: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"{server.url}{path}", method=method,
                                     headers={"Authorization": f"Bearer {access_token}"})
    try:
        with urllib.request.urlopen(request, timeout=ANSWER_WITHIN + 5) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else {}
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def hq_on_private_postgres(tmp_path: Path, fresh_database: str) -> Iterator[HQServer]:
    server = make_server(tmp_path / "hq", agents={"fox": "field-operative", "hank": "handler"},
                         storage={"url": fresh_database})
    server.start()
    yield server
    server.stop()


async def test_hq_through_a_postgres_outage(postgres: PrivatePostgres, hq_on_private_postgres: HQServer) -> None:
    hq = hq_on_private_postgres
    status, hank_pair, _ = _login(hq, "hank")
    assert status == 200
    hank = await RecordingClient().connect(hq.url, hank_pair["access_token"])
    fox = await RecordingClient().connect(hq.url, _login(hq, "fox")[1]["access_token"])
    try:
        assert (await fox.call("join", {"channel": "missions"}))["ok"]
        acked = []
        for i in range(3):
            ack = await hank.call("message", {"channel": "missions", "text": f"before {i}"})
            assert ack["ok"], ack
            acked.append(ack["id"])
        await fox.wait_for("message", count=3)

        postgres.stop()  # immediate: a crash
        started = time.monotonic()
        ack = await hank.call("message", {"channel": "missions", "text": "during"})
        took = time.monotonic() - started
        assert ack["ok"] is False and ack["error"]["code"] == "unavailable", ack
        assert took < ANSWER_WITHIN, f"message answered after {took:.1f}s"
        for event, payload in [("history", {"channel": "missions"}), ("join", {"channel": "hq"})]:
            ack = await hank.call(event, payload)
            assert ack["ok"] is False and ack["error"]["code"] == "unavailable", (event, ack)
        status, body, took = _login(hq, "fox")
        assert (status, body["error"]["code"]) == (503, "unavailable") and took < ANSWER_WITHIN, (status, body, took)
        status, body = _refresh(hq, hank_pair["refresh_token"])
        assert (status, body["error"]["code"]) == (503, "unavailable"), (status, body)
        for method, path in [("GET", "/api/auth/me"), ("POST", "/api/auth/logout")]:
            status, body = _bearer(hq, method, path, hank_pair["access_token"])
            assert (status, body["error"]["code"]) == (503, "unavailable"), (path, status, body)
        # The sockets stay: what needs no database still works.
        assert hank.sio.connected and fox.sio.connected
        assert await hank.call("leave", {"channel": "missions"}) == {"ok": True}

        postgres.start()
        deadline = time.monotonic() + RECOVER_WITHIN
        while True:
            ack = await hank.call("message", {"channel": "missions", "text": "after"})
            if ack["ok"] or time.monotonic() > deadline:
                break
            assert ack["error"]["code"] == "unavailable", ack
            await asyncio.sleep(0.2)
        assert ack == {"ok": True, "id": acked[-1] + 1}, ack
        assert _login(hq, "fox")[0] == 200
        # The refresh refused during the outage was not spent: it still works.
        status, body = _refresh(hq, hank_pair["refresh_token"])
        assert status == 200, body
        history = await fox.call("history", {"channel": "missions"})
        assert [(m["id"], m["text"]) for m in history["messages"]] == [
            (1, "before 0"), (2, "before 1"), (3, "before 2"), (4, "after")]
        assert (await fox.wait_for("message", count=4))[-1]["text"] == "after"

        # A database that hangs instead of refusing: answers still come within the store's budget.
        postgres.freeze()
        try:
            started = time.monotonic()
            ack = await hank.call("message", {"channel": "missions", "text": "frozen"})
            took = time.monotonic() - started
            assert ack["ok"] is False and ack["error"]["code"] == "unavailable", ack
            assert took < ANSWER_WITHIN, f"message answered after {took:.1f}s"
            status, body, took = _login(hq, "fox")
            assert status == 503 and took < ANSWER_WITHIN, (status, body, took)
            assert hank.sio.connected and fox.sio.connected
        finally:
            postgres.thaw()
        deadline = time.monotonic() + RECOVER_WITHIN
        while not (ack := await hank.call("message", {"channel": "missions", "text": "thawed"}))["ok"]:
            assert time.monotonic() < deadline, ack
            await asyncio.sleep(0.2)
        assert ack["id"] == 5, ack
        assert hank.disconnected_at is None and fox.disconnected_at is None
        assert "handler failed" not in hq.log_path.read_text()
    finally:
        await hank.close()
        await fox.close()


# a cluster -------------------------------------------------------------------------------------
def _healthz(server: HQServer) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{server.url}/healthz", timeout=ANSWER_WITHIN + 5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(params=[2, 3], ids=["2-nodes", "3-nodes"])
async def cluster_on_private_postgres(request: pytest.FixtureRequest, tmp_path: Path,
                                      fresh_database: str) -> AsyncIterator[Cluster]:
    """Nodes on the private PostgreSQL and the machine's Redis (which this module never stops)."""
    ensure_redis()
    async with start_cluster(tmp_path, request.param, REDIS_URL, database_url=fresh_database) as cluster:
        yield cluster


async def test_a_cluster_through_a_postgres_outage(postgres: PrivatePostgres,
                                                   cluster_on_private_postgres: Cluster) -> None:
    cluster = cluster_on_private_postgres
    members = [await RecordingClient().connect(node.url, _login(node, "fox")[1]["access_token"]) for node in cluster]
    senders = [await RecordingClient().connect(node.url, _login(node, "hank")[1]["access_token"]) for node in cluster]
    clients = members + senders
    try:
        for member in members:
            assert (await member.call("join", {"channel": "missions"}))["ok"]
        acked = []
        for sender in senders:  # one message stored through each node
            ack = await sender.call("message", {"channel": "missions", "text": f"before {len(acked)}"})
            assert ack["ok"], ack
            acked.append(ack["id"])
        for member in members:
            await member.wait_for("message", count=len(acked))

        postgres.stop()  # immediate: a crash
        for sender in senders:
            started = time.monotonic()
            ack = await sender.call("message", {"channel": "missions", "text": "during"})
            took = time.monotonic() - started
            assert ack["ok"] is False and ack["error"]["code"] == "unavailable", ack
            assert took < ANSWER_WITHIN, f"message answered after {took:.1f}s"
        for node in cluster:
            status, body, took = _login(node, "fox")
            assert (status, body["error"]["code"]) == (503, "unavailable") and took < ANSWER_WITHIN, (status, body)
            status, body = _healthz(node)
            assert status == 503 and body["status"] == "unavailable" and body["down"] == ["database"], body
        assert all(client.sio.connected for client in clients)  # the sockets stay

        postgres.start()  # every node recovers by itself
        for sender in senders:
            deadline = time.monotonic() + RECOVER_WITHIN
            text = f"after {len(acked)}"
            while not (ack := await sender.call("message", {"channel": "missions", "text": text}))["ok"]:
                assert ack["error"]["code"] == "unavailable", ack
                assert time.monotonic() < deadline, ack
                await asyncio.sleep(0.2)
            acked.append(ack["id"])
        assert acked == list(range(1, 2 * len(cluster) + 1)), "an attempt refused during the outage used up an id"
        for member in members:
            await member.wait_for("message", count=len(acked))
        await asyncio.sleep(0.3)  # a duplicate arriving late would show up here
        for member in members:  # on every node: every acknowledged message, once, in id order
            assert [m["id"] for m in member.received("message")] == acked
            history = await member.call("history", {"channel": "missions"})
            assert [m["id"] for m in history["messages"]] == acked
        for node in cluster:
            assert _login(node, "fox")[0] == 200
            assert _healthz(node)[0] == 200
        assert all(client.disconnected_at is None for client in clients)
        cluster.assert_clean_logs()
        assert not any("handler failed" in node.log_path.read_text() for node in cluster)
    finally:
        for client in clients:
            await client.close()
