"""Service keys (issue 20 item 3, contract §1, §2, §4, §8) over an in-process HQ: a key connects over
Socket.IO and the plain WebSocket with its role's clearance and sends as ``key:NAME``; revoking it
refuses it at once and ends its live sockets; a wrong key counts as a failed login for the address;
keys are refused on ``/api/auth/*``, the directors' API and the console; the key is never written to
the logs, the audit trail or the database; ``last_used`` costs no write per use.
"""

from __future__ import annotations

import logging
from typing import AsyncIterator

import aiohttp
import pytest
import socketio

from hq.app import HQ_KEY
from hq.auth.service_keys import CreatedKey, ServiceKeys
from hq.store.sqlite import SQLiteStore

from .inprocess import ClockedHQ, ClockedHQFactory, clocked_hq  # noqa: F401  (the in-process HQ)
from .plain import PlainClient
from .sio import RecordingClient
from .support import PASSWORD


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def keys_of(hq: ClockedHQ) -> ServiceKeys:
    return hq.app[HQ_KEY].service_keys


def ws_url(hq: ClockedHQ, path: str = "/ws") -> str:
    return hq.url.replace("http://", "ws://") + path


async def bearer_plain(hq: ClockedHQ, http: aiohttp.ClientSession, key: str, path: str = "/ws") -> PlainClient:
    return await PlainClient.open(http, ws_url(hq, path), headers={"Authorization": f"Bearer {key}"})


async def test_a_key_connects_over_socketio_with_its_role_and_sends_as_key_name(
        clocked_hq: ClockedHQFactory, http: aiohttp.ClientSession) -> None:
    hq = await clocked_hq()
    handler_key = await keys_of(hq).create("deploy-bot", "handler")
    analyst_key = await keys_of(hq).create("reader", "analyst")
    assert handler_key.secret.startswith("hqk_") and len(handler_key.secret) >= 4 + 43
    hank = await RecordingClient().connect(hq.url, (await hq.login(http, "hank"))["access_token"])
    bot = await RecordingClient().connect(hq.url, handler_key.secret)
    reader = await RecordingClient().connect(hq.url, analyst_key.secret)
    try:
        assert (await hank.call("join", {"channel": "hq"}))["ok"] is True
        assert (await bot.call("join", {"channel": "missions"}))["ok"] is True  # handler may read missions
        assert (await reader.call("join", {"channel": "missions"}))["error"]["code"] == "forbidden"
        assert (await bot.call("message", {"channel": "hq", "text": "deployed"}))["ok"] is True
        (message,) = await hank.wait_for("message")
        assert (message["from"], message["text"]) == ("key:deploy-bot", "deployed")
        history = await hank.call("history", {"channel": "hq"})
        assert history["messages"][-1]["from"] == "key:deploy-bot"
    finally:
        for client in (hank, bot, reader):
            await client.close()
    accepted = [line for line in hq.audit_lines() if line["event"] == "connection_accepted"]
    assert {"key:deploy-bot", "key:reader"} <= {line["codename"] for line in accepted}


async def test_a_key_connects_over_the_plain_websocket_with_its_role(
        clocked_hq: ClockedHQFactory, http: aiohttp.ClientSession) -> None:
    hq = await clocked_hq()
    key = await keys_of(hq).create("Feed", "field-operative")
    by_header = await bearer_plain(hq, http, key.secret, "/ws/missions")
    by_frame = await PlainClient.open(http, ws_url(hq))
    try:
        auth = await by_frame.call("auth", token=key.secret)
        assert auth["ok"] is True and auth["exp"] is None  # a key does not expire
        assert (await by_header.call("history", channel="missions"))["ok"] is True
        assert (await by_frame.call("join", channel="hq"))["error"]["code"] == "forbidden"  # hq: handler
        assert (await by_frame.call("message", channel="hq", text="hello"))["ok"] is True  # writes field-operative
        stored = await hq.app[HQ_KEY].store.history("hq", None, 10)
        assert stored[-1].sender == "key:Feed"
    finally:
        await by_header.close()
        await by_frame.close()


async def test_revoking_a_key_refuses_it_at_once_and_ends_its_live_sockets(
        clocked_hq: ClockedHQFactory, http: aiohttp.ClientSession) -> None:
    hq = await clocked_hq()
    key = await keys_of(hq).create("bot", "handler")
    other = await keys_of(hq).create("other-bot", "handler")
    sio_client = await RecordingClient().connect(hq.url, key.secret)
    bystander = await RecordingClient().connect(hq.url, other.secret)
    plain = await bearer_plain(hq, http, key.secret)
    try:
        await keys_of(hq).revoke("BOT")
        assert await sio_client.wait_for("session_ended") == [{"reason": "revoked"}]
        await sio_client.wait_disconnected()
        assert (await plain.next_push("session_ended"))["reason"] == "revoked"
        assert await plain.closed() == (4001, "Unauthorized: Token Revoked")
        assert bystander.sio.connected and bystander.received("session_ended") == []
        refused = RecordingClient()
        with pytest.raises(socketio.exceptions.ConnectionError):
            await refused.connect(hq.url, key.secret)
        assert refused.connect_error["data"]["code"] == "token_revoked"
        again = await bearer_plain(hq, http, key.secret)
        assert await again.closed() == (4001, "Unauthorized: Token Revoked")
    finally:
        await sio_client.close()
        await bystander.close()
        await plain.close()
    actions = [(line["action"], line["target"]) for line in hq.audit_lines() if line["event"] == "admin_action"]
    assert actions == [("key_add", "key:bot"), ("key_add", "key:other-bot"), ("key_revoke", "key:bot")]


async def test_a_wrong_key_counts_as_a_failed_login_for_the_address(
        clocked_hq: ClockedHQFactory, http: aiohttp.ClientSession) -> None:
    hq = await clocked_hq(limits={"login_failures_per_address": 3})
    for attempt in range(3):
        client = RecordingClient()
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(hq.url, f"hqk_{'x' * 43}{attempt}")
        await client.close()
    status, body = await hq.post(http, "/api/auth/login", {"username": "hank", "password": PASSWORD})
    assert (status, body["error"]["code"]) == (429, "too_many_attempts")
    failed = [line for line in hq.audit_lines() if line["event"] == "login_failed" and line["code"] == "token_invalid"]
    assert len(failed) == 3


async def test_a_wrong_key_before_the_limit_leaves_a_login_possible(
        clocked_hq: ClockedHQFactory, http: aiohttp.ClientSession) -> None:
    hq = await clocked_hq(limits={"login_failures_per_address": 3})
    plain = await bearer_plain(hq, http, "hqk_not-a-key")
    assert await plain.closed() == (4001, "Unauthorized: Invalid Token")
    await hq.login(http, "hank")  # one failure of three: still allowed


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/api/auth/me"), ("POST", "/api/auth/logout"),  # /api/auth/*
    ("GET", "/api/agents"), ("GET", "/api/sessions"), ("GET", "/api/keys"),  # the directors' API
    ("POST", "/api/keys"), ("DELETE", "/api/keys/root-bot"),
    ("GET", "/api/roles"),  # the console's
])
async def test_a_key_is_refused_on_the_auth_routes_the_directors_api_and_the_console(
        clocked_hq: ClockedHQFactory, http: aiohttp.ClientSession, method: str, path: str) -> None:
    hq = await clocked_hq()
    key = await keys_of(hq).create("root-bot", "director")  # even a director's key
    async with http.request(method, f"{hq.url}{path}", headers={"Authorization": f"Bearer {key.secret}"}) as r:
        assert (r.status, (await r.json())["error"]["code"]) == (401, "token_invalid")
    async with http.request(method, f"{hq.url}{path}", cookies={"jwt": key.secret},
                            headers={"X-HQ-Console": "1"}) as r:
        assert (r.status, (await r.json())["error"]["code"]) == (401, "token_invalid")


async def test_the_key_never_reaches_the_logs_the_audit_trail_or_the_database(
        clocked_hq: ClockedHQFactory, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    hq = await clocked_hq()
    created: CreatedKey = await keys_of(hq).create("bot", "handler")
    secret = created.secret
    client = await RecordingClient().connect(hq.url, secret)
    assert (await client.call("message", {"channel": "hq", "text": "hi"}))["ok"] is True
    await client.close()
    plain = await PlainClient.open(http, ws_url(hq) + f"?token={secret}")
    assert (await plain.call("history", channel="hq"))["ok"] is True
    await plain.close()
    await keys_of(hq).write_last_used()
    await keys_of(hq).revoke("bot")
    random_part = secret.removeprefix("hqk_")
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "connection_accepted" in (hq.workdir / "audit.log").read_text()  # the trail was written
    for text in (logged, (hq.workdir / "audit.log").read_text()):
        assert random_part not in text
    store = hq.app[HQ_KEY].store
    assert isinstance(store, SQLiteStore)
    files = [path for path in hq.workdir.iterdir() if ".sqlite" in path.name or path.suffix in (".db", "-wal")]
    assert files
    for path in files:
        assert random_part.encode() not in path.read_bytes()


async def test_last_used_is_kept_in_memory_and_written_in_the_background(
        clocked_hq: ClockedHQFactory, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch) -> None:
    hq = await clocked_hq()
    keys = keys_of(hq)
    key = await keys.create("bot", "handler")
    store = hq.app[HQ_KEY].store
    assert isinstance(store, SQLiteStore)
    writes: list[str] = []
    execute = store.db.execute

    def counting(sql: str, *args: object) -> object:
        if sql.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")):
            writes.append(sql)
        return execute(sql, *args)

    monkeypatch.setattr(store.db, "execute", counting)
    for _ in range(5):
        client = await RecordingClient().connect(hq.url, key.secret)
        await client.close()
    assert [w for w in writes if "service_keys" in w] == []  # five uses, no write
    (listed,) = await keys.list()
    assert listed.last_used is not None  # this node knows it already
    assert (await store.list_service_keys())[0].last_used is None
    monkeypatch.setattr(store.db, "executemany", _counting_many(store, writes))
    await keys.write_last_used()
    await keys.write_last_used()  # nothing new: no write
    assert len([w for w in writes if "service_keys" in w]) == 1
    assert (await store.list_service_keys())[0].last_used == listed.last_used


def _counting_many(store: SQLiteStore, writes: list[str]) -> object:
    executemany = store.db.executemany

    def counting(sql: str, *args: object) -> object:
        writes.append(sql)
        return executemany(sql, *args)
    return counting


async def test_the_background_writer_writes_last_used_when_hq_stops(clocked_hq: ClockedHQFactory) -> None:
    hq = await clocked_hq()
    key = await keys_of(hq).create("bot", "handler")
    client = await RecordingClient().connect(hq.url, key.secret)
    await client.close()
    await keys_of(hq).stop()
    assert (await hq.app[HQ_KEY].store.list_service_keys())[0].last_used is not None


async def test_the_directors_api_creates_lists_and_revokes_keys(
        clocked_hq: ClockedHQFactory, http: aiohttp.ClientSession) -> None:
    hq = await clocked_hq()
    director = {"Authorization": f"Bearer {(await hq.login(http, 'dora'))['access_token']}"}
    status, created = await hq.post(http, "/api/keys", {"name": "Deploy-Bot", "role": "handler"}, director)
    assert status == 201 and set(created) == {"name", "role", "created", "key"}
    assert created["key"].startswith("hqk_")
    status, body = await hq.post(http, "/api/keys", {"name": "deploy-bot", "role": "analyst"}, director)
    assert (status, body["error"]["code"]) == (409, "key_exists")
    status, body = await hq.post(http, "/api/keys", {"name": "x", "role": "king"}, director)
    assert (status, body["error"]["code"]) == (400, "bad_request")
    hank = {"Authorization": f"Bearer {(await hq.login(http, 'hank'))['access_token']}"}
    status, body = await hq.post(http, "/api/keys", {"name": "mine", "role": "handler"}, hank)
    assert (status, body["error"]["code"]) == (403, "forbidden")
    client = await RecordingClient().connect(hq.url, created["key"])
    async with http.get(f"{hq.url}/api/keys", headers=director) as r:
        listed = await r.json()
    assert r.status == 200 and [(k["name"], k["role"]) for k in listed] == [("Deploy-Bot", "handler")]
    assert set(listed[0]) == {"name", "role", "created", "last_used"} and listed[0]["last_used"] is not None
    async with http.delete(f"{hq.url}/api/keys/DEPLOY-BOT", headers=director) as r:
        assert r.status == 204
    assert await client.wait_for("session_ended") == [{"reason": "revoked"}]
    await client.close()
    async with http.delete(f"{hq.url}/api/keys/deploy-bot", headers=director) as r:
        assert (r.status, (await r.json())["error"]["code"]) == (404, "not_found")
    actions = [(a["action"], a["actor"], a["interface"]) for a in hq.audit_lines() if a["event"] == "admin_action"]
    assert actions == [("key_add", "dora", "api"), ("key_revoke", "dora", "api")]
