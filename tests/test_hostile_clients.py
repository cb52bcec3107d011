"""No client can slip out of HQ's control: raw frames over websocket and polling.

python-socketio routes a client event named ``disconnect`` or ``connect`` to the server's own
handlers; HQ refuses every event name but its own at the boundary (hq/realtime/socket_server.py). These
tests send the frames an attacker would and check that identity, rooms, expiry and revocation
stay as they were, that junk costs a handful of log lines, and that nothing a client sends lands
in the audit log.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import AsyncIterator

import aiohttp
import pytest

from .raw import RawPoller, RawWebSocket
from .sio import RecordingClient
from .support import HQServer

RESERVED = ["connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"]
OTHER_NAMES = ["*", "hq:refused", "constructor", "__proto__", "message ", "JOIN", "token_expiring", "x" * 300]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def metric(server: HQServer, name: str, labels: str) -> float:
    """One sample of HQ's ``/metrics``."""
    import urllib.request
    text = urllib.request.urlopen(f"{server.url}/metrics", timeout=10).read().decode()
    match = re.search(rf"^{re.escape(name)}{{{re.escape(labels)}}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


async def test_reserved_and_unknown_names_answer_not_found_over_websocket(http: aiohttp.ClientSession,
                                                                          hq: HQServer) -> None:
    fox = await RawWebSocket.open(http, hq.url, hq.login("fox")["access_token"])
    before = metric(hq, "hq_events_total", 'event="unknown",outcome="not_found"')
    for number, name in enumerate(RESERVED + OTHER_NAMES):
        ack = await fox.call(name, "forged", number)
        assert ack["ok"] is False and ack["error"]["code"] == "not_found", name
    # Without an ack id nothing is answered, and nothing changes either.
    for name in RESERVED:
        await fox.send("42" + json.dumps([name, {"HTTP_AUTHORIZATION": "Bearer x"}]))
    assert (await fox.call("join", {"channel": "missions"}, 99))["ok"] is True
    after = metric(hq, "hq_events_total", 'event="unknown",outcome="not_found"')
    assert after - before == len(RESERVED + OTHER_NAMES) + len(RESERVED)
    await fox.close()


async def test_a_forged_disconnect_does_not_escape_disable(http: aiohttp.ClientSession, hq: HQServer) -> None:
    fox = await RawWebSocket.open(http, hq.url, hq.login("fox")["access_token"])
    assert (await fox.call("join", {"channel": "missions"}, 1))["ok"] is True
    await fox.send('42["disconnect","forged"]')
    assert (await fox.call("disconnect", "forged", 2))["error"]["code"] == "not_found"
    assert hq.cli("agents", "disable", "fox").returncode == 0
    await fox.wait_closed()
    assert fox.events("session_ended") == [{"reason": "agent_disabled"}]
    hank = await RecordingClient().connect(hq.url, hq.login("hank")["access_token"])
    assert (await hank.call("message", {"channel": "missions", "text": "after the disable"}))["ok"] is True
    await asyncio.sleep(0.3)
    assert fox.events("message") == []
    await hank.close()


async def test_a_forged_disconnect_does_not_escape_logout_or_expiry(http: aiohttp.ClientSession,
                                                                     hq_factory) -> None:
    hq = hq_factory(auth={"access_ttl": 3, "expiry_warning": 1})
    fox_login = hq.login("fox")
    by_logout = await RawWebSocket.open(http, hq.url, fox_login["access_token"])
    by_expiry = await RawWebSocket.open(http, hq.url, hq.login("hank")["access_token"])
    for raw in (by_logout, by_expiry):
        await raw.send('42["disconnect","forged"]')
        await raw.send('42["disconnecting"]')
    async with http.post(f"{hq.url}/api/auth/logout",
                         headers={"Authorization": f"Bearer {fox_login['access_token']}"}) as response:
        assert response.status == 204
    await by_logout.wait_closed()
    assert by_logout.events("session_ended") == [{"reason": "logged_out"}]
    await by_expiry.wait_closed(timeout=10)
    assert by_expiry.events("token_expiring") and by_expiry.events("session_ended") == [{"reason": "token_expired"}]


async def test_a_forged_connect_event_cannot_swap_identity(http: aiohttp.ClientSession, hq: HQServer) -> None:
    dora_token = hq.login("dora")["access_token"]
    fox = await RawWebSocket.open(http, hq.url, hq.login("fox")["access_token"])
    forged = {"HTTP_AUTHORIZATION": f"Bearer {dora_token}", "token": dora_token}
    assert (await fox.call("connect", forged, 1))["error"]["code"] == "not_found"
    # A second CONNECT packet on the live namespace changes nothing either.
    await fox.send("40" + json.dumps({"token": dora_token}))
    # Still fox: a field-operative may not write to missions (handler) nor read hq (handler).
    assert (await fox.call("message", {"channel": "missions", "text": "x"}, 2))["error"]["code"] == "forbidden"
    assert (await fox.call("join", {"channel": "hq"}, 3))["error"]["code"] == "forbidden"
    accepted = [line for line in hq.audit_lines() if line["event"] == "connection_accepted"]
    assert [line["codename"] for line in accepted] == ["fox"]
    await fox.close()


async def test_reserved_names_over_polling(http: aiohttp.ClientSession, hq: HQServer) -> None:
    poller = RawPoller(http, hq.url)
    await poller.open()
    assert (await poller.connect(hq.login("fox")["access_token"])).startswith("40")
    body = "\x1e".join(f'42{n}["{name}","forged"]' for n, name in enumerate(RESERVED))
    assert await poller.post(body) == 200
    acks: list[str] = []
    while len(acks) < len(RESERVED):
        status, packets = await poller.get(timeout=10)
        assert status == 200
        acks += [p for p in packets if p.startswith("43")]
    assert all('"not_found"' in ack for ack in acks)
    pending = asyncio.create_task(poller.get(timeout=10))  # a polling client always has a GET waiting
    await asyncio.sleep(0.2)
    assert hq.cli("agents", "disable", "fox").returncode == 0
    status, seen = await pending
    while status == 200 and "1" not in seen:
        status, packets = await poller.get(timeout=10)
        seen += packets
    assert any(p.startswith('42["session_ended"') for p in seen), seen


async def test_audit_fields_never_carry_client_text(http: aiohttp.ClientSession, hq: HQServer) -> None:
    token = hq.login("fox")["access_token"]
    hostile = token[:300] + "\n{\"event\":\"login_succeeded\"}"
    fox = await RawWebSocket.open(http, hq.url, token)
    await fox.send("42" + json.dumps(["disconnect", hostile]))
    await fox.send("41")  # a real namespace disconnect, after the forged one
    await fox.close()
    # A refused handshake whose auth payload is hostile, and a hostile user agent on a login.
    refused = await RawWebSocket.open(http, hq.url)
    await refused.send("40" + json.dumps({"token": hostile}))
    await refused.wait_frame(lambda f: f.startswith("44"))
    await refused.close()
    async with http.post(f"{hq.url}/api/auth/login", json={"username": hostile[:60], "password": hostile},
                         headers={"User-Agent": hostile.replace("\n", " ")}) as response:
        assert response.status in (400, 401)
    await asyncio.sleep(0.5)
    audit = (hq.workdir / "audit.log").read_text()
    assert token[:40] not in audit and "forged" not in audit
    # admin_action: an agent added with the CLI is audited (since issue 11).
    lines = hq.audit_lines()
    assert all(line["event"] in {"login_succeeded", "login_failed", "connection_accepted", "connection_refused",
                                 "connection_ended", "admin_action"} for line in lines)
    assert all(line["actor"] == "cli" for line in lines if line["event"] == "admin_action")
    ended = [line for line in lines if line["event"] == "connection_ended"]
    assert [line["reason"] for line in ended] == ["client disconnect"]
    for line in lines:
        for key, value in line.items():
            assert "\n" not in str(value) and "{" not in str(value), (key, value)


async def test_a_flood_of_junk_costs_a_handful_of_log_lines(http: aiohttp.ClientSession, hq: HQServer) -> None:
    token = hq.login("fox")["access_token"]
    log_before = hq.log_path.read_text(errors="replace").count("\n")
    faults_before = sum(metric(hq, "hq_protocol_faults_total", f'kind="{kind}"')
                        for kind in ("bad_socketio_packet", "bad_event", "unexpected_socketio_packet",
                                     "unexpected_engineio_packet", "binary_frame", "bad_engineio_packet"))
    # Per socket: 49 frames that HQ refuses without closing (reserved names, a second CONNECT, a
    # namespace it does not serve), then one the protocol cannot go on after, which closes it.
    refused = ['42["disconnect","x"]', '421["connect",{}]', '42["newListener"]', '40{"token":"x"}',
               '42/admin,["x"]', '422["removeListener",1]', '42["hq:refused"]']
    fatal = ['42{"not":"a list"}', "42[]", "42[1,2]", '42["message"', "4x", "49", "43", "431[]", "44{}",
             '451-["message",{"_placeholder":true,"num":9}]', "46", "4", "7", "9zz", "", "2probe", "0"]
    sent = 0
    for round_ in range(20):
        batch = [await RawWebSocket.open(http, hq.url, token) for _ in range(10)]
        for number, raw in enumerate(batch):
            for n in range(49):
                await raw.send(refused[n % len(refused)])
            frame = fatal[(round_ * 10 + number) % len(fatal)]
            if frame.startswith("451-"):
                await raw.send(frame)  # its attachment's placeholder points nowhere
                await raw.ws.send_bytes(b"attachment")
            elif frame:
                await raw.send(frame)
            else:
                await raw.ws.send_bytes(b"\x00\xff")
            sent += 50
        await asyncio.gather(*(raw.wait_closed() for raw in batch))
    assert sent == 10_000
    # Junk over polling too: bad payloads, unknown packet types, a client PING, a POST without a session.
    for body in ("2probe", "x", "4", "\x1e\x1e", "b!!!", "9", "1:1"):
        poller = RawPoller(http, hq.url)
        await poller.open()
        status = await poller.post(body, timeout=5)
        if status == 200:  # valid Engine.IO carrying junk Socket.IO: the session is closed all the same
            status, packets = await poller.get(timeout=5)
            assert status == 400 or "1" in packets, (body, packets)
        else:
            assert status == 400, body
    async with http.post(f"{hq.url}/socket.io/?EIO=4&transport=polling", data="40") as response:
        assert response.status == 400
    await asyncio.sleep(0.5)
    output = hq.log_path.read_text(errors="replace")
    new_lines = output.splitlines()[log_before:]
    assert "Traceback" not in output and " 500 " not in output
    noisy = [line for line in new_lines if "aiohttp.access" not in line]
    assert len(noisy) <= 5, noisy
    faults_after = sum(metric(hq, "hq_protocol_faults_total", f'kind="{kind}"')
                       for kind in ("bad_socketio_packet", "bad_event", "unexpected_socketio_packet",
                                    "unexpected_engineio_packet", "binary_frame", "bad_engineio_packet"))
    assert faults_after - faults_before >= 200  # at least one per socket
    # Still serving: a well-behaved client connects and writes.
    hank = await RecordingClient().connect(hq.url, hq.login("hank")["access_token"])
    assert (await hank.call("message", {"channel": "hq", "text": "still here"}))["ok"] is True
    await hank.close()
