"""The Socket.IO Admin UI namespace: off by default, directors only, password checked, read-only, no tokens."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest
import socketio

from .sio import RecordingClient
from .support import PASSWORD, HQServer

ADMIN = {"admin": {"enabled": True}}


class AdminClient:
    """A python-socketio client on ``/admin``, as the Admin UI connects, recording what it is sent."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: list[tuple[str, Any]] = []
        self.sio.on("*", self._record, namespace="/admin")

    async def _record(self, event: str, *data: Any) -> None:
        self.events.append((event, data))

    async def connect(self, hq: HQServer, auth: Any) -> "AdminClient":
        await self.sio.connect(hq.url, namespaces=["/admin"], auth=auth, transports=["websocket"],
                               wait_timeout=10)
        return self

    async def wait_for(self, event: str, timeout: float = 10) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            for name, data in self.events:
                if name == event:
                    return data
            if time.monotonic() > deadline:
                raise AssertionError(f"no {event!r} within {timeout}s; got {[n for n, _ in self.events]}")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()


async def refused(hq: HQServer, auth: Any) -> None:
    client = AdminClient()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(hq, auth)
    await client.close()


def admin_logins(hq: HQServer) -> list[dict[str, Any]]:
    return [line for line in hq.audit_lines() if line.get("interface") == "admin_ui"]


async def test_off_by_default(hq: HQServer) -> None:
    await refused(hq, {"username": "dora", "password": PASSWORD})
    assert admin_logins(hq) == []


@pytest.mark.real_process  # [admin] enabled: python-socketio's instrumentation patches engineio for the whole process
async def test_a_director_gets_read_only_statistics(hq_factory) -> None:
    hq = hq_factory(**ADMIN)
    admin = await AdminClient().connect(hq, {"username": "dora", "password": PASSWORD})
    (config,) = await admin.wait_for("config")
    assert "AGGREGATED_EVENTS" in config["supportedFeatures"]
    for action in ("EMIT", "JOIN", "LEAVE", "DISCONNECT", "ALL_EVENTS"):
        assert action not in config["supportedFeatures"], action
    agent = await RecordingClient().connect(hq.url, hq.login("fox")["access_token"])
    (stats,) = await admin.wait_for("server_stats")
    assert stats["clientsCount"] >= 1 and {"name": "/", "socketsCount": 1} in stats["namespaces"]
    await agent.close()
    await admin.close()
    (line,) = [entry for entry in admin_logins(hq) if entry["event"] == "login_succeeded"]
    assert line["codename"] == "dora" and line["transport"] == "websocket" and line["address"] == "127.0.0.1"


@pytest.mark.real_process  # [admin] enabled: python-socketio's instrumentation patches engineio for the whole process
async def test_refusals(hq_factory) -> None:
    hq = hq_factory(**ADMIN)
    hq.add_agent("dee", "director")
    assert hq.cli("agents", "disable", "dee").returncode == 0
    cases = [
        ({"username": "dora", "password": "not the right password"}, "invalid_credentials"),
        ({"username": "nobody", "password": PASSWORD}, "invalid_credentials"),
        ({"username": "hank", "password": PASSWORD}, "forbidden"),
        ({"username": "dee", "password": PASSWORD}, "agent_disabled"),
        ({"username": "dora"}, "bad_request"),
        ({"username": "dora", "password": 12345}, "bad_request"),
        (None, "bad_request"),
        ({"username": "dora", "password": "x" * 5000}, "invalid_credentials"),
    ]
    for auth, _ in cases:
        await refused(hq, auth)
    codes = [line["code"] for line in admin_logins(hq)]
    assert codes == [code for _, code in cases]
    assert all(line["event"] == "login_failed" for line in admin_logins(hq))


@pytest.mark.real_process  # [admin] enabled: python-socketio's instrumentation patches engineio for the whole process
async def test_failed_passwords_are_throttled(hq_factory) -> None:
    hq = hq_factory(admin={"enabled": True}, limits={"login_failures_per_codename": 2})
    for _ in range(2):
        await refused(hq, {"username": "dora", "password": "guess guess guess"})
    await refused(hq, {"username": "dora", "password": PASSWORD})
    assert admin_logins(hq)[-1]["code"] == "too_many_attempts"


async def http_login(hq: HQServer, codename: str, password: str) -> tuple[int, Any]:
    """``POST /api/auth/login``: the status and the JSON body."""
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{hq.url}/api/auth/login", json={"username": codename, "password": password}) as answer:
            return answer.status, await answer.json()


@pytest.mark.real_process  # [admin] enabled: python-socketio's instrumentation patches engineio for the whole process
async def test_the_admin_ui_and_http_login_share_one_failure_budget(hq_factory) -> None:
    # One budget per codename, whichever door the guesses come through: not one per door.
    hq = hq_factory(admin={"enabled": True}, limits={"login_failures_per_codename": 5})
    for _ in range(3):
        await refused(hq, {"username": "dora", "password": "guess guess guess"})
    for _ in range(2):
        assert (await http_login(hq, "dora", "another guess, wrong"))[0] == 401
    status, body = await http_login(hq, "dora", PASSWORD)
    assert status == 429 and body["error"]["code"] == "too_many_attempts", body
    await refused(hq, {"username": "dora", "password": PASSWORD})
    assert [line["code"] for line in admin_logins(hq)] == ["invalid_credentials"] * 3 + ["too_many_attempts"]


@pytest.mark.real_process  # [admin] enabled: python-socketio's instrumentation patches engineio for the whole process
async def test_the_admin_never_receives_tokens(hq_factory) -> None:
    hq = hq_factory(**ADMIN)
    admin = await AdminClient().connect(hq, {"username": "dora", "password": PASSWORD})
    pair = hq.login("hank")
    fresh = hq.login("hank")["access_token"]
    agent = await RecordingClient().connect(hq.url, pair["access_token"], transports=["websocket"],
                                            headers={"Authorization": f"Bearer {pair['access_token']}"})
    assert (await agent.call("reauth", {"token": fresh}))["ok"]
    assert (await agent.call("message", {"channel": "hq", "text": "for directors"}))["ok"]
    await admin.wait_for("server_stats")
    await asyncio.sleep(2.5)  # one more statistics period, so anything queued would have been sent
    seen = json.dumps(admin.events)
    for secret in (pair["access_token"], fresh, pair["refresh_token"], PASSWORD):
        assert secret not in seen
    assert "for directors" not in seen
    await admin.close()
    await agent.close()


@pytest.mark.real_process  # [admin] enabled: python-socketio's instrumentation patches engineio for the whole process
async def test_read_only_unless_configured_otherwise(hq_factory) -> None:
    for read_only in (True, False):
        hq = hq_factory(agents={"dora": "director", "fox": "field-operative"},
                        admin={"enabled": True, "read_only": read_only})
        admin = await AdminClient().connect(hq, {"username": "dora", "password": PASSWORD})
        (config,) = await admin.wait_for("config")
        assert ("DISCONNECT" in config["supportedFeatures"]) is not read_only
        agent = await RecordingClient().connect(hq.url, hq.login("fox")["access_token"])
        await admin.sio.emit("_disconnect", ("/", False), namespace="/admin")
        if read_only:
            # Nothing handles the action: after the next statistics period fox is still connected.
            admin.events.clear()
            await admin.wait_for("server_stats")
            assert agent.sio.connected and agent.disconnected_at is None
        else:
            await agent.wait_disconnected()
        await agent.close()
        await admin.close()
