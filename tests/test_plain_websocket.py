"""The plain WebSocket endpoint (contract §8) over an in-process HQ on a manual clock: token sources,
the ``auth`` frame, every close code of the table, every frame error, the events and their acks,
delivery between both endpoints, session ends, limits and hostile input. The real-process tests
(the access log, pings on the wall clock, two nodes) are at the end.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest

from hq.app import HQ_KEY, METRICS_KEY
from hq.http.asyncapi import CLOSE_CODES
from hq.realtime.engine import websocket_text_frame
from hq.realtime.fanout import Broadcast, LocalManager
from hq.realtime.plainws import frames
from hq.realtime.plainws.endpoint import AUTH_TIMEOUT

from .cluster import start_cluster
from .inprocess import ClockedHQ, ClockedHQFactory, clocked_hq  # noqa: F401  (the in-process HQ)
from .plain import PlainClient, gather_pushes
from .services import REDIS_URL
from .test_fanout import TaskCounter, server_with_members
from .sio import RecordingClient
from .support import HQServer

MESSAGE_KEYS = {"id", "channel", "from", "text", "ts"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def ws_url(hq: ClockedHQ, path: str = "/ws", query: str = "") -> str:
    return hq.url.replace("http://", "ws://") + path + (f"?{query}" if query else "")


async def token_of(hq: ClockedHQ, http: aiohttp.ClientSession, codename: str) -> str:
    return str((await hq.login(http, codename))["access_token"])


async def open_plain(hq: ClockedHQ, http: aiohttp.ClientSession, codename: str, path: str = "/ws",
                     **kwargs: Any) -> PlainClient:
    """A plain socket authenticated by the Bearer header."""
    token = await token_of(hq, http, codename)
    return await PlainClient.open(http, ws_url(hq, path), headers={"Authorization": f"Bearer {token}"}, **kwargs)


async def audit_line(hq: ClockedHQ, event: str, **fields: str) -> dict[str, Any]:
    """The newest audit line of ``event`` (with ``fields``), waiting for one (a socket's end is audited
    once it closed)."""
    deadline = asyncio.get_running_loop().time() + 10
    while not (lines := [line for line in hq.audit_lines()
                         if line["event"] == event and all(line.get(k) == v for k, v in fields.items())]):
        assert asyncio.get_running_loop().time() < deadline, f"no {event} in the audit log"
        await asyncio.sleep(0.02)
    return lines[-1]


async def refused(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int | None, str]:
    """Open ``url`` and return how HQ closed it."""
    client = await PlainClient.open(http, url, **kwargs)
    return await client.closed()


# token sources ---------------------------------------------------------------------------------
async def test_each_token_source_admits_and_the_first_present_is_the_one_judged(
        clocked_hq: ClockedHQFactory, http: aiohttp.ClientSession) -> None:
    hq = await clocked_hq()
    token = await token_of(hq, http, "hank")
    for kwargs in ({"url": ws_url(hq, query=f"token={token}")},
                   {"url": ws_url(hq), "headers": {"Authorization": f"Bearer {token}"}},
                   {"url": ws_url(hq), "headers": {"Cookie": f"jwt={token}"}}):
        client = await PlainClient.open(http, **kwargs)
        assert (await client.call("join", channel="hq")) == {"type": "ack", "ref": 1, "ok": True, "channel": "hq",
                                                             "last_id": 0}
        await client.close()
    # A bad query token is judged even with a good header and cookie (the query comes first).
    assert await refused(http, ws_url(hq, query="token=nonsense"),
                         headers={"Authorization": f"Bearer {token}", "Cookie": f"jwt={token}"}) == (
        4001, "Unauthorized: Invalid Token")
    # Another scheme in Authorization is not a reason to look at the cookie.
    assert await refused(http, ws_url(hq), headers={"Authorization": f"Basic {token}", "Cookie": f"jwt={token}"}) == (
        4001, "Unauthorized: Invalid Token")


# the auth frame ----------------------------------------------------------------------------------
async def test_the_auth_frame_admits_and_frames_before_it_are_refused_token_missing(
        clocked_hq: ClockedHQFactory, http: aiohttp.ClientSession) -> None:
    hq = await clocked_hq()
    token = await token_of(hq, http, "hank")
    client = await PlainClient.open(http, ws_url(hq))
    assert (await client.call("join", channel="hq"))["error"]["code"] == "token_missing"
    await client.send("not json")
    assert (await client.ack(None))["error"]["code"] == "token_missing"
    await client.send({"type": "auth", "ref": "a", "token": 7})
    assert (await client.ack("a"))["error"]["code"] == "bad_request"
    answer = await client.call("auth", token=token)
    assert answer["ok"] is True and isinstance(answer["exp"], int)
    assert (await client.call("join", channel="hq"))["ok"] is True
    # The timer was cancelled: moving the clock past the deadline changes nothing.
    hq.clock.advance(AUTH_TIMEOUT + 1)
    assert (await client.call("presence", channel="hq"))["agents"] == [
        {"codename": "hank", "role": "handler", "connections": 1}]
    await client.close()


async def test_no_auth_frame_within_5_seconds_closes_4001_token_missing(
        clocked_hq: ClockedHQFactory, http: aiohttp.ClientSession) -> None:
    hq = await clocked_hq()
    client = await PlainClient.open(http, ws_url(hq))
    assert (await client.call("history", channel="hq"))["error"]["code"] == "token_missing"
    hq.clock.advance(AUTH_TIMEOUT - 0.5)
    assert (await client.call("history", channel="hq"))["error"]["code"] == "token_missing"  # still open
    hq.clock.advance(0.5)
    assert await client.closed() == (4001, "Unauthorized: Token Missing")
    refusals = [line for line in hq.audit_lines() if line["event"] == "connection_refused"]
    assert refusals[-1]["code"] == "token_missing" and refusals[-1]["transport"] == "plain_websocket"


async def test_a_bad_auth_frame_is_answered_then_closed(clocked_hq: ClockedHQFactory,
                                                        http: aiohttp.ClientSession) -> None:
    hq = await clocked_hq()
    client = await PlainClient.open(http, ws_url(hq))
    answer = await client.call("auth", token="not-a-jwt")
    assert answer["ok"] is False and answer["error"]["code"] == "token_invalid"
    assert await client.closed() == (4001, "Unauthorized: Invalid Token")


# the close-code table ----------------------------------------------------------------------------
async def test_token_refusals_close_with_the_tables_codes(clocked_hq: ClockedHQFactory,
                                                          http: aiohttp.ClientSession) -> None:
    hq = await clocked_hq(auth={"access_ttl": 60, "leeway": 0})
    parts = hq.app[HQ_KEY]
    forged = (await token_of(hq, http, "hank"))[:-6] + "AAAAAA"
    assert await refused(http, ws_url(hq, query=f"token={forged}")) == (4001, "Unauthorized: Invalid Token")
    assert await refused(http, ws_url(hq, query="token=")) == (4001, "Unauthorized: Token Missing")

    expiring = await token_of(hq, http, "hank")
    hq.clock.advance(61)
    assert await refused(http, ws_url(hq, query=f"token={expiring}")) == (4001, "Unauthorized: Token Expired")

    body = await hq.login(http, "hank")
    status, _ = await hq.post(http, "/api/auth/logout", {"refresh_token": body["refresh_token"]},
                              headers={"Authorization": f"Bearer {body['access_token']}"})
    assert status in (200, 204)
    assert await refused(http, ws_url(hq, query=f"token={body['access_token']}")) == (
        4001, "Unauthorized: Token Revoked")

    disabled = await token_of(hq, http, "fox")
    await parts.admin.set_enabled("fox", False)
    assert await refused(http, ws_url(hq), headers={"Cookie": f"jwt={disabled}"}) == (
        4003, "Forbidden: Agent Disabled")
    codes = [line["code"] for line in hq.audit_lines() if line["event"] == "connection_refused"]
    assert codes == ["token_invalid", "token_missing", "token_expired", "token_revoked", "agent_disabled"]


async def test_a_foreign_origin_is_closed_4003_and_an_allowed_one_admitted(
        clocked_hq: ClockedHQFactory, http: aiohttp.ClientSession) -> None:
    hq = await clocked_hq()
    token = await token_of(hq, http, "hank")
    cookie = {"Cookie": f"jwt={token}"}
    assert await refused(http, ws_url(hq), headers={**cookie, "Origin": "https://evil.example"}) == (
        4003, "Forbidden: Origin Not Allowed")
    line = [line for line in hq.audit_lines() if line["event"] == "connection_refused"][-1]
    assert line["code"] == "origin_not_allowed" and line["origin"] == "https://evil.example"
    allowed = hq.app[HQ_KEY].settings.server.allowed_origins[0]
    client = await PlainClient.open(http, ws_url(hq), headers={**cookie, "Origin": allowed})
    assert (await client.call("join", channel="hq"))["ok"] is True
    await client.close()


async def test_channel_paths_join_on_open_or_close_4003_4004(clocked_hq: ClockedHQFactory,
                                                             http: aiohttp.ClientSession) -> None:
    hq = await clocked_hq()
    fox = await open_plain(hq, http, "fox", "/missions")
    joined = await fox.ack(None)
    assert joined == {"type": "ack", "ref": None, "ok": True, "channel": "missions", "last_id": 0}
    hank = await open_plain(hq, http, "hank", "/ws/missions")
    assert (await hank.ack(None))["ok"] is True
    assert (await hank.call("message", channel="missions", text="go"))["ok"] is True
    pushed = await fox.next_push("message")
    assert pushed["type"] == "message" and pushed["text"] == "go" and pushed["from"] == "hank"

    ana = await open_plain(hq, http, "ana", "/ws/missions")  # an analyst may not read missions
    assert (await ana.ack(None))["error"]["code"] == "forbidden"
    assert await ana.closed() == (4003, "Forbidden: Clearance")
    nowhere = await open_plain(hq, http, "hank", "/ws/no-such-channel")
    assert (await nowhere.ack(None))["error"]["code"] == "not_found"
    assert await nowhere.closed() == (4004, "Not Found: Channel")
    await fox.close()
    await hank.close()


async def test_a_frame_over_max_packet_bytes_closes_1009(clocked_hq: ClockedHQFactory,
                                                         http: aiohttp.ClientSession) -> None:
    hq = await clocked_hq(server={"max_packet_bytes": 4096})
    client = await open_plain(hq, http, "hank")
    big = json.dumps({"type": "message", "channel": "hq", "text": "x" * 5000})
    await client.send(big)
    assert await client.closed() == (1009, "Message Too Big")
    other = await open_plain(hq, http, "hank")  # that socket only
    assert (await other.call("join", channel="hq"))["ok"] is True
    await other.close()


async def test_a_flood_is_answered_rate_limited_then_closed_4008(clocked_hq: ClockedHQFactory,
                                                                  http: aiohttp.ClientSession,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    hq = await clocked_hq(limits={"events_per_second": 5, "events_burst": 10})
    client = await open_plain(hq, http, "hank")
    with caplog.at_level(logging.INFO):
        for number in range(200):  # an unknown event is answered without waiting: acks stay in order
            await client.send({"type": "nope", "ref": number})
        code = await client.closed()
    assert code == (4008, "Policy Violation: Rate Limited")
    answers = [ack["error"]["code"] for ack in client.acks]
    assert [ack["ref"] for ack in client.acks] == list(range(len(answers)))
    # The burst first, then refusals: strikes run out after events_burst more (a few may refill meanwhile).
    assert answers[:10] == ["not_found"] * 10 and answers[10:20] == ["rate_limited"] * 10
    assert answers.count("rate_limited") <= 15 and len(answers) < 200
    assert not any(r.exc_info for r in caplog.records) and "Traceback" not in caplog.text
    metrics = hq.app[METRICS_KEY].exposition()[0].decode()
    assert 'hq_rate_limit_hits_total{limit="events"}' in metrics


# frame errors ------------------------------------------------------------------------------------
async def test_frame_errors_are_answered_and_never_close_the_socket(clocked_hq: ClockedHQFactory,
                                                                    http: aiohttp.ClientSession) -> None:
    hq = await clocked_hq()
    client = await open_plain(hq, http, "hank")
    await client.send("{not json")
    assert (await client.ack(None))["error"]["code"] == "bad_request"
    await client.send("[1, 2]")
    assert (await client.ack(None))["error"]["code"] == "bad_request"
    await client.send({"ref": "no-type", "channel": "hq"})
    assert (await client.ack("no-type"))["error"]["code"] == "bad_request"
    await client.send({"type": 42, "ref": "number"})
    assert (await client.ack("number"))["error"]["code"] == "bad_request"
    for reserved in ("nope", "connect", "disconnect", "ack"):
        assert (await client.call(reserved))["error"]["code"] == "not_found"
    assert (await client.call("join"))["error"]["code"] == "bad_request"
    assert (await client.call("join", channel=5))["error"]["code"] == "bad_request"
    assert (await client.call("message", channel="hq", text=""))["error"]["code"] == "bad_request"
    assert (await client.call("history", channel="hq", limit=0))["error"]["code"] == "bad_request"
    assert (await client.call("join", channel="no-such"))["error"]["code"] == "not_found"
    assert (await client.call("message", channel="hq", text="é" * 9000))["error"]["code"] == "payload_too_large"
    await client.ws.send_bytes(b"\x00\x01binary")
    binary = await client.ack(None)
    assert binary["ok"] is False and binary["error"]["code"] == "bad_request"
    # Every ref came back as it was sent, any JSON value.
    for ref in ({"a": [1, None]}, [1, "x"], 3.5, True):
        await client.send({"type": "leave", "ref": ref, "channel": "hq"})
        assert (await client.ack(ref))["ok"] is True
    assert (await client.call("join", channel="hq"))["ok"] is True  # still open and served
    await client.close()


async def test_a_junk_flood_logs_a_bounded_number_of_lines_and_no_traceback(
        clocked_hq: ClockedHQFactory, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture) -> None:
    hq = await clocked_hq(limits={"events_per_second": 1000, "events_burst": 2000})
    client = await open_plain(hq, http, "hank")
    junk = ["{", "[]", "null", '"x"', '{"type": null}', '"\\ud800"', '{"type":"join","channel":{"a":1}}',
            "[" * 5000, '{"type":"message","channel":"hq","text":"\\ud800"}']
    with caplog.at_level(logging.INFO):
        for number in range(1500):
            await client.send(junk[number % len(junk)])
        for _ in range(300):
            await client.ws.send_bytes(b"\xff" * 10)
        await client.send({"type": "join", "ref": "last", "channel": "hq"})
        assert (await client.ack("last"))["ok"] is True
    assert len(client.acks) == 1800  # every frame answered
    assert len(caplog.records) <= 3, caplog.text
    assert not any(r.exc_info for r in caplog.records) and "Traceback" not in caplog.text
    await client.close()


# the events --------------------------------------------------------------------------------------
async def test_the_events_answer_exactly_as_over_socketio(clocked_hq: ClockedHQFactory,
                                                          http: aiohttp.ClientSession) -> None:
    hq = await clocked_hq()
    hank_token = await token_of(hq, http, "hank")
    plain = await PlainClient.open(http, ws_url(hq), headers={"Authorization": f"Bearer {hank_token}"})
    sio = await RecordingClient().connect(hq.url, hank_token)
    try:
        for event, payload in (("join", {"channel": "hq"}), ("message", {"channel": "hq", "text": "one"}),
                               ("history", {"channel": "hq", "limit": 1}), ("presence", {"channel": "hq"}),
                               ("join", {"channel": "missions"}), ("message", {"channel": "nowhere", "text": "x"}),
                               ("leave", {"channel": "missions"})):
            plain_answer = await plain.call(event, **payload)
            sio_answer = await sio.call(event, payload)
            assert plain_answer.pop("type") == "ack" and isinstance(plain_answer.pop("ref"), int)
            for answer in (plain_answer, sio_answer):  # ids and ts differ; the shape does not
                answer.pop("id", None)
                for message in answer.get("messages", []):
                    message.pop("id"), message.pop("ts")
                if "agents" in answer:
                    answer["agents"] = sorted(a["codename"] for a in answer["agents"])
            assert plain_answer == sio_answer, event
        reauth = await plain.call("reauth", token=await token_of(hq, http, "hank"))
        assert reauth["ok"] is True and isinstance(reauth["exp"], int)
        assert (await plain.call("reauth", token=await token_of(hq, http, "fox")))["error"]["code"] == "token_invalid"
    finally:
        await plain.close()
        await sio.sio.disconnect()


async def test_messages_cross_both_endpoints_both_ways_with_presence(clocked_hq: ClockedHQFactory,
                                                                     http: aiohttp.ClientSession) -> None:
    hq = await clocked_hq()
    plain = await open_plain(hq, http, "dora")
    assert (await plain.call("join", channel="hq"))["ok"] is True
    sio = await RecordingClient().connect(hq.url, await token_of(hq, http, "hank"))
    try:
        assert (await sio.call("join", {"channel": "hq"}))["ok"]
        assert (await plain.next_push("presence"))["codename"] == "dora"  # its own arrival
        assert (await plain.next_push("presence")) == {"type": "presence", "channel": "hq", "codename": "hank",
                                                       "online": True}
        from_sio = await sio.call("message", {"channel": "hq", "text": "to plain"})
        pushed = await plain.next_push("message")
        assert pushed.pop("type") == "message" and set(pushed) == MESSAGE_KEYS
        assert pushed["id"] == from_sio["id"] and pushed["text"] == "to plain" and pushed["from"] == "hank"
        from_plain = await plain.call("message", channel="hq", text="to socket.io")
        received = (await sio.wait_for("message"))[0]
        assert received["id"] == from_plain["id"] and received["from"] == "dora" and set(received) == MESSAGE_KEYS
        assert from_plain["id"] == from_sio["id"] + 1
        assert not plain.pushed  # the sender's own message is not echoed
        await plain.close()
        presence = [p for p in await sio.wait_for("presence", 2)]
        assert {"channel": "hq", "codename": "dora", "online": False} in presence
    finally:
        await sio.sio.disconnect()


# session ends ------------------------------------------------------------------------------------
async def test_logout_ends_a_plain_socket_with_session_ended_and_4001(clocked_hq: ClockedHQFactory,
                                                                      http: aiohttp.ClientSession) -> None:
    hq = await clocked_hq()
    body = await hq.login(http, "hank")
    client = await PlainClient.open(http, ws_url(hq, query=f"token={body['access_token']}"))
    assert (await client.call("join", channel="hq"))["ok"] is True
    status, _ = await hq.post(http, "/api/auth/logout", {"refresh_token": body["refresh_token"]},
                              headers={"Authorization": f"Bearer {body['access_token']}"})
    assert status in (200, 204)
    assert await client.closed() == (4001, "Unauthorized: Token Revoked")
    assert [p for p in client.pushed if p["type"] != "presence"] == [{"type": "session_ended", "reason": "logged_out"}]
    ended = await audit_line(hq, "connection_ended")
    assert ended["reason"] == "logged_out" and ended["transport"] == "plain_websocket"


async def test_disabling_the_agent_ends_a_plain_socket_4003(clocked_hq: ClockedHQFactory,
                                                            http: aiohttp.ClientSession) -> None:
    hq = await clocked_hq()
    client = await open_plain(hq, http, "fox")
    assert (await client.call("join", channel="missions"))["ok"] is True
    await hq.app[HQ_KEY].admin.set_enabled("fox", False)
    assert await client.closed() == (4003, "Forbidden: Agent Disabled")
    assert [p for p in client.pushed if p["type"] != "presence"] == [{"type": "session_ended", "reason": "agent_disabled"}]


async def test_expiry_warns_then_closes_4001_token_expired(clocked_hq: ClockedHQFactory,
                                                           http: aiohttp.ClientSession) -> None:
    hq = await clocked_hq(auth={"access_ttl": 120, "expiry_warning": 60, "leeway": 0})
    client = await open_plain(hq, http, "hank")
    answer = await client.call("join", channel="hq")
    assert answer["ok"] is True
    hq.clock.advance(61)
    warning = await client.next_push("token_expiring")
    assert set(warning) == {"type", "exp"}
    assert (await client.call("history", channel="hq"))["ok"] is True  # warned, still served
    hq.clock.advance(60)
    assert await client.closed() == (4001, "Unauthorized: Token Expired")
    assert [p for p in client.pushed if p["type"] != "presence"] == [{"type": "session_ended", "reason": "token_expired"}]


async def test_stopping_hq_closes_plain_sockets_1001(clocked_hq: ClockedHQFactory, http: aiohttp.ClientSession) -> None:
    hq = await clocked_hq()
    client = await open_plain(hq, http, "hank")
    waiting = await PlainClient.open(http, ws_url(hq))  # not authenticated yet: closed too
    assert (await client.call("join", channel="hq"))["ok"] is True
    closing = asyncio.gather(client.closed(), waiting.closed())
    await hq.server.close()
    assert await closing == [(1001, "Going Away"), (1001, "Going Away")]


async def test_metrics_and_audit_name_the_plain_transport(clocked_hq: ClockedHQFactory,
                                                          http: aiohttp.ClientSession) -> None:
    hq = await clocked_hq()
    client = await open_plain(hq, http, "hank")
    assert (await client.call("join", channel="hq"))["ok"] is True
    metrics = hq.app[METRICS_KEY].exposition()[0].decode()
    assert 'hq_connections_accepted_total{transport="plain_websocket"} 1.0' in metrics
    assert 'hq_transport_events_total{transport="plain_websocket"} 1.0' in metrics
    assert "hq_connections_live 1.0" in metrics
    accepted = [line for line in hq.audit_lines() if line["event"] == "connection_accepted"]
    assert accepted[-1]["transport"] == "plain_websocket" and accepted[-1]["codename"] == "hank"
    await client.close()


async def test_hq_pings_and_closes_a_socket_that_stops_answering(clocked_hq: ClockedHQFactory,
                                                                 http: aiohttp.ClientSession) -> None:
    # aiohttp's heartbeat runs on the event loop's own clock: a short interval, waited for by events.
    hq = await clocked_hq(server={"ping_interval": 0.3})
    answering = await open_plain(hq, http, "hank")  # aiohttp's client answers pings itself
    silent = await open_plain(hq, http, "fox", autoping=False)
    msg = await silent.ws.receive(timeout=10)
    assert msg.type is aiohttp.WSMsgType.PING  # an RFC 6455 ping frame

    async def dropped() -> None:
        message = msg
        while message.type is not aiohttp.WSMsgType.CLOSED:  # no pong: HQ drops the connection
            message = await silent.ws.receive(timeout=10)
    silent_dropped = asyncio.ensure_future(dropped())
    while not silent_dropped.done():
        # aiohttp's client answers a ping while it reads: the answering socket keeps reading.
        assert (await answering.call("presence", channel="hq"))["ok"] is True
        await asyncio.sleep(0.05)
    await silent_dropped
    ended = await audit_line(hq, "connection_ended", codename="fox")
    assert ended["reason"] == "ping timeout"
    assert (await answering.call("join", channel="hq"))["ok"] is True  # pinged all along, still served
    assert not [line for line in hq.audit_lines() if line["event"] == "connection_ended" and line["codename"] == "hank"]
    await answering.close()


# real processes: the access log, two nodes ---------------------------------------------------------
async def test_the_query_token_never_reaches_a_log(shared_hq: HQServer, http: aiohttp.ClientSession) -> None:
    body = shared_hq.login("hank")
    token = body["access_token"]
    url = shared_hq.url.replace("http://", "ws://")
    for path in ("/ws", "/ws/hq", "/missions"):
        client = await PlainClient.open(http, f"{url}{path}?token={token}&x=1")
        if path == "/ws":
            assert (await client.call("join", channel="hq"))["ok"] is True
        await client.close()
    deadline = asyncio.get_running_loop().time() + 10
    # aiohttp writes a request's access log line when its handler returns (the socket's end).
    while (log := shared_hq.log_path.read_text(errors="replace")).count("/missions?token=[redacted]") < 1:
        assert asyncio.get_running_loop().time() < deadline, log[-2000:]
        await asyncio.sleep(0.05)
    assert "GET /ws?token=[redacted]&x=1" in log and "GET /ws/hq?token=[redacted]&x=1" in log
    audit = (shared_hq.workdir / "audit.log").read_text()
    for piece in (token, token[-24:], token[:40]):
        assert piece not in log and piece not in audit


async def test_messages_reach_both_endpoints_on_every_node_once_and_in_order(tmp_path: Path) -> None:
    async with start_cluster(tmp_path, 2, REDIS_URL) as cluster, aiohttp.ClientSession() as http:
        node_a, node_b = cluster
        tokens = {name: node_a.login(name)["access_token"] for name in ("hank", "dora")}

        async def plain_on(node: HQServer, codename: str) -> PlainClient:
            url = node.url.replace("http://", "ws://") + "/ws/hq"
            client = await PlainClient.open(http, url, headers={"Authorization": f"Bearer {tokens[codename]}"})
            assert (await client.ack(None))["ok"] is True
            return client
        plain_a, plain_b = await plain_on(node_a, "hank"), await plain_on(node_b, "dora")
        sio_b = await RecordingClient().connect(node_b.url, tokens["hank"])
        try:
            assert (await sio_b.call("join", {"channel": "hq"}))["ok"]
            sent: list[int] = []
            for number in range(10):  # interleaved: plain on A, Socket.IO on B
                sent.append((await plain_a.call("message", channel="hq", text=f"a{number}"))["id"])
                sent.append((await sio_b.call("message", {"channel": "hq", "text": f"b{number}"}))["id"])
            assert sent == list(range(sent[0], sent[0] + 20))
            on_b = [m["id"] for m in await gather_pushes(plain_b, "message", 20)]  # every one, both origins
            assert on_b == sent
            on_sio = [m["id"] for m in await sio_b.wait_for("message", 10)]
            assert on_sio == sent[0::2]  # the plain socket's on node A; not its own
            on_a = [m["id"] for m in await gather_pushes(plain_a, "message", 10)]
            assert on_a == sent[1::2]
            for client in (plain_a, plain_b):
                assert not [p for p in client.pushed if p["type"] == "message"]  # nothing twice
            assert len(sio_b.received("message")) == 10
        finally:
            await sio_b.sio.disconnect()
            await plain_a.close()
            await plain_b.close()
        cluster.assert_clean_logs()


# fan-out: the direct path ---------------------------------------------------------------------------
class RecordingMember:
    """A direct member of a room that records the frames written to it."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def write_broadcast(self, broadcast: Broadcast) -> bool:
        self.frames.append(broadcast.encoded(frames.event_frame))
        return True

    async def send_broadcast(self, broadcast: Broadcast) -> None:
        raise AssertionError("an uncompressed member is written to directly")


async def test_a_broadcast_to_100_plain_members_is_encoded_once_and_creates_no_task(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sio, sockets = await server_with_members(LocalManager())  # 100 Socket.IO members of channel:x
    members = [RecordingMember() for _ in range(100)]
    for number, member in enumerate(members):
        await sio.manager.enter_direct(f"ws-{number}", "channel:x", member)
    encoded: list[str] = []
    original = frames.event_text

    def counting(event: str, payload: dict[str, Any]) -> str:
        encoded.append(event)
        return original(event, payload)
    monkeypatch.setattr(frames, "event_text", counting)
    with TaskCounter() as tasks:
        await sio.emit("message", {"id": 1, "text": "to all"}, room="channel:x", skip_sid="ws-0")
    assert tasks.count == 0 and encoded == ["message"]
    assert members[0].frames == []  # the sender
    frame = members[1].frames[0]
    assert all(member.frames == [frame] for member in members[1:])
    assert frame == websocket_text_frame('{"type":"message","id":1,"text":"to all"}')
    assert all(socket.queue.qsize() == 1 for socket in sockets)  # the Socket.IO members too
    for number in range(100):  # out of the room with the last one; nothing left behind
        await sio.manager.leave_direct(f"ws-{number}", "channel:x")
        sio.manager.forget_direct(f"ws-{number}")
    assert sio.manager.direct_members == {}
    assert [sid for sid, _ in sio.manager.get_participants("/", "channel:x") if sid.startswith("ws-")] == []


def test_every_close_the_endpoint_sends_is_documented_in_the_asyncapi_document() -> None:
    sent = {frames.ORIGIN_NOT_ALLOWED, frames.CLEARANCE, frames.NO_CHANNEL, frames.RATE_LIMITED,
            frames.MESSAGE_TOO_BIG, frames.GOING_AWAY, frames.TRY_AGAIN_LATER, frames.INVALID_TOKEN,
            *frames.TOKEN_REFUSED.values(), *frames.SESSION_ENDED.values()}
    documented = {(code, reason) for code, reason, _ in CLOSE_CODES}
    assert {(close.code, close.reason) for close in sent} <= documented
