"""Socket.IO over a real HQ with python-socketio's AsyncClient: connect (token sources, precedence,
every refusal code, origins), then join / leave / message / history / reauth with their ack shapes
and error codes, size limits and fan-out. The clearance matrix is in tests/test_clearance.py and
the event rate limit in tests/test_limits.py.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Awaitable, Callable

import aiohttp
import jwt
import pytest
import socketio

from .sio import RecordingClient
from .support import AGENTS, HQServer

Connect = Callable[..., Awaitable[RecordingClient]]
MESSAGE_KEYS = {"id", "channel", "from", "text", "ts"}


@pytest.fixture(scope="module")
def tokens(shared_hq: HQServer) -> dict[str, str]:
    """One access token per standard agent (valid for the module's lifetime)."""
    return {codename: shared_hq.login(codename)["access_token"] for codename in AGENTS}


@pytest.fixture(scope="module")
def secret(shared_hq: HQServer) -> bytes:
    return (shared_hq.workdir / "hq.secret").read_bytes().strip()


@pytest.fixture
async def connect(shared_hq: HQServer) -> AsyncIterator[Connect]:
    """``await connect(token, **kwargs)`` opens a RecordingClient; all are closed after the test."""
    made: list[RecordingClient] = []

    async def open_client(token: str | None = None, **kwargs: Any) -> RecordingClient:
        client = RecordingClient()
        made.append(client)
        return await client.connect(shared_hq.url, token, **kwargs)

    yield open_client
    for client in made:
        await close_client(client)


async def close_client(client: RecordingClient) -> None:
    """Close a client; a polling one without waiting for its pending long-poll.

    python-engineio's client waits for the GET in flight, which its server answers only at the
    ping timeout after a client-side close (about 30 s); aborting skips that wait.
    """
    if client.sio.connected and client.sio.transport() == "polling":
        await client.sio.eio.disconnect(abort=True)
    await client.close()


async def refused(server: HQServer, token: str | None = None, url_suffix: str = "", **kwargs: Any) -> Any:
    """Connect expecting a refusal; returns the ``connect_error`` data."""
    client = RecordingClient()
    try:
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(server.url + url_suffix, token, **kwargs)
        assert not client.sio.connected
        return client.connect_error
    finally:
        await client.close()


def assert_refusal(data: Any, code: str) -> None:
    """The contract's refusal: message "Unauthorized: ..." and data {"code": CODE}."""
    assert isinstance(data, dict), data
    assert data["message"].startswith("Unauthorized: "), data
    assert data["data"] == {"code": code}, data


def forge(secret: bytes, genuine: str, **changes: Any) -> str:
    """A token signed with HQ's secret: the genuine one's claims with ``changes``."""
    header = jwt.get_unverified_header(genuine)
    claims = {**jwt.decode(genuine, options={"verify_signature": False}), "jti": uuid.uuid4().hex, **changes}
    return jwt.encode(claims, secret, algorithm="HS256", headers={"typ": header["typ"], "kid": header["kid"]})


# connect: token sources and precedence -----------------------------------------------------------

@pytest.mark.parametrize("source", ["auth", "bearer", "cookie", "query"])
@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_token_sources(shared_hq: HQServer, tokens: dict[str, str], source: str, transport: str) -> None:
    token = tokens["hank"]
    kwargs: dict[str, Any] = {"transports": [transport]}
    if source == "bearer":
        kwargs["headers"] = {"Authorization": f"Bearer {token}"}
    elif source == "cookie":
        kwargs["headers"] = {"Cookie": f"theme=dark; jwt={token}"}
    client = RecordingClient()
    try:
        if source == "query":
            await client.connect(f"{shared_hq.url}?token={token}", None, **kwargs)
        else:
            await client.connect(shared_hq.url, token if source == "auth" else None, **kwargs)
        assert client.sio.connected
        assert (await client.call("join", {"channel": "missions"}))["ok"] is True
    finally:
        await close_client(client)


@pytest.mark.parametrize("first,second", [("auth", "cookie"), ("auth", "bearer"), ("bearer", "cookie"),
                                          ("cookie", "query")])
async def test_only_the_first_source_is_judged(shared_hq: HQServer, tokens: dict[str, str],
                                               first: str, second: str) -> None:
    sources = {first: "not-a-valid-token", second: tokens["hank"]}
    headers: dict[str, str] = {}
    if "bearer" in sources:
        headers["Authorization"] = f"Bearer {sources['bearer']}"
    if "cookie" in sources:
        headers["Cookie"] = f"jwt={sources['cookie']}"
    suffix = f"?token={sources['query']}" if "query" in sources else ""
    data = await refused(shared_hq, sources.get("auth"), url_suffix=suffix, headers=headers)
    assert_refusal(data, "token_invalid")


async def test_non_string_auth_token_is_refused(shared_hq: HQServer, tokens: dict[str, str]) -> None:
    client = RecordingClient()
    try:
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.sio.connect(shared_hq.url, auth={"token": {"nested": tokens["hank"]}},
                                     headers={"Cookie": f"jwt={tokens['hank']}"}, wait_timeout=10)
        assert_refusal(client.connect_error, "token_invalid")
    finally:
        await client.close()


# connect: refusal codes ------------------------------------------------------------------------

async def test_refused_without_token(shared_hq: HQServer) -> None:
    assert_refusal(await refused(shared_hq), "token_missing")


async def test_refused_over_polling(shared_hq: HQServer) -> None:
    # Raw Engine.IO long-polling: python-socketio's client would wait ~30 s on the abandoned poll.
    base = f"{shared_hq.url}/socket.io/?EIO=4&transport=polling"
    async with aiohttp.ClientSession() as http:
        async with http.get(base) as r:
            opening = await r.text()
        assert opening.startswith("0")
        sid = json.loads(opening[1:])["sid"]
        for auth, code in ((None, "token_missing"), ({"token": "garbage"}, "token_invalid")):
            body = "40" + (json.dumps(auth) if auth else "")
            async with http.post(f"{base}&sid={sid}", data=body, headers={"Content-Type": "text/plain"}) as r:
                assert r.status == 200
            async with http.get(f"{base}&sid={sid}") as r:
                packets = (await r.text()).split("\x1e")
            assert packets[0].startswith("44"), packets
            assert_refusal(json.loads(packets[0][2:]), code)
        await http.post(f"{base}&sid={sid}", data="1", headers={"Content-Type": "text/plain"})


@pytest.mark.parametrize("bad", ["garbage", "a.b.c", "x" * 20_000, ""])
async def test_refused_invalid(shared_hq: HQServer, bad: str) -> None:
    data = await refused(shared_hq, bad)
    assert_refusal(data, "token_missing" if bad == "" else "token_invalid")


async def test_refused_forged_claims(shared_hq: HQServer, tokens: dict[str, str], secret: bytes) -> None:
    for changes in ({"aud": "elsewhere"}, {"iss": "elsewhere"}, {"sub": "ghost"}):
        assert_refusal(await refused(shared_hq, forge(secret, tokens["fox"], **changes)), "token_invalid")
    assert_refusal(await refused(shared_hq, forge(b"w" * 48, tokens["fox"])), "token_invalid")


async def test_refused_expired(shared_hq: HQServer, tokens: dict[str, str], secret: bytes) -> None:
    now = int(time.time())
    token = forge(secret, tokens["fox"], iat=now - 1000, exp=now - 100)
    assert_refusal(await refused(shared_hq, token), "token_expired")


async def test_refused_revoked(shared_hq: HQServer) -> None:
    token = shared_hq.login("fox")["access_token"]
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{shared_hq.url}/api/auth/logout", headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 204
    assert_refusal(await refused(shared_hq, token), "token_revoked")


async def test_refused_disabled(shared_hq: HQServer) -> None:
    shared_hq.add_agent("rt_dis", "handler")
    token = shared_hq.login("rt_dis")["access_token"]
    assert shared_hq.cli("agents", "disable", "rt_dis").returncode == 0
    assert_refusal(await refused(shared_hq, token), "agent_disabled")


# origins -----------------------------------------------------------------------------------------

async def handshake_status(server: HQServer, headers: dict[str, str], transport: str = "polling") -> int:
    """Status of a bare Engine.IO handshake (no Socket.IO connect yet)."""
    async with aiohttp.ClientSession() as http:
        if transport == "websocket":
            try:
                ws = await http.ws_connect(f"{server.url}/socket.io/?EIO=4&transport=websocket", headers=headers)
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status
            await ws.close()
            return 101
        async with http.get(f"{server.url}/socket.io/?EIO=4&transport=polling", headers=headers) as r:
            return r.status


@pytest.mark.parametrize("transport", ["polling", "websocket"])
async def test_origin_allow_list(shared_hq: HQServer, transport: str) -> None:
    ok = 200 if transport == "polling" else 101
    assert await handshake_status(shared_hq, {}, transport) == ok  # non-browser clients send no Origin
    assert await handshake_status(shared_hq, {"Origin": f"http://127.0.0.1:{shared_hq.port}"}, transport) == ok
    for origin in ("http://evil.example", f"http://127.0.0.1:{shared_hq.port}.evil.example", "null",
                   f"https://127.0.0.1:{shared_hq.port}"):
        assert await handshake_status(shared_hq, {"Origin": origin}, transport) == 400, origin
    # python-engineio's same-origin default believes X-Forwarded-Host; the explicit list must not.
    forwarded = {"Origin": "http://evil.example", "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "http"}
    assert await handshake_status(shared_hq, forwarded, transport) == 400


async def test_disallowed_origin_client_cannot_connect(shared_hq: HQServer, tokens: dict[str, str]) -> None:
    client = RecordingClient()
    try:
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(shared_hq.url, tokens["hank"], headers={"Origin": "http://evil.example"})
    finally:
        await client.close()


# a refused client receives nothing -----------------------------------------------------------------

async def test_refused_client_receives_nothing(shared_hq: HQServer, connect: Connect, tokens: dict[str, str]) -> None:
    listener = await connect(tokens["dora"])
    for channel in ("hq", "missions"):
        assert (await listener.call("join", {"channel": channel}))["ok"]
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{shared_hq.url}/socket.io/?EIO=4&transport=websocket")
        opening = await ws.receive_str(timeout=10)
        assert opening.startswith("0")
        await ws.send_str("40" + json.dumps({"token": "forged.token.value"}))
        refusal = await ws.receive_str(timeout=10)
        assert refusal.startswith("44")
        assert_refusal(json.loads(refusal[2:]), "token_invalid")
        # A refused socket that ignores the refusal and asks anyway gets no answer and joins nothing.
        await ws.send_str('420["join",{"channel":"hq"}]')
        await ws.send_str('421["history",{"channel":"missions"}]')
        sender = await connect(tokens["hank"])
        marker = uuid.uuid4().hex
        for channel in ("hq", "missions"):
            assert (await sender.call("message", {"channel": channel, "text": marker}))["ok"]
        await listener.wait_for("message", count=2)
        frames: list[str] = []
        try:
            while True:
                message = await ws.receive(timeout=1.0)
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                frames.append(message.data)
        except asyncio.TimeoutError:
            pass
        assert [f for f in frames if f not in ("2", "3")] == [], frames
        await ws.close()


# join / leave ---------------------------------------------------------------------------------------

async def test_join_and_leave_acks(connect: Connect, tokens: dict[str, str]) -> None:
    dora = await connect(tokens["dora"])
    ack = await dora.call("join", {"channel": "missions"})
    assert set(ack) == {"ok", "channel", "last_id"} and ack["ok"] is True and ack["channel"] == "missions"
    assert isinstance(ack["last_id"], int) and ack["last_id"] >= 0
    hank = await connect(tokens["hank"])
    sent = await hank.call("message", {"channel": "missions", "text": "after join"})
    await dora.wait_for("message")
    assert (await dora.call("join", {"channel": "missions"}))["last_id"] == sent["id"]  # joining twice is fine
    assert await dora.call("leave", {"channel": "missions"}) == {"ok": True}
    assert await dora.call("leave", {"channel": "missions"}) == {"ok": True}
    # After leaving, nothing more arrives from that channel (checked against a listener that stayed).
    fox = await connect(tokens["fox"])
    assert (await fox.call("join", {"channel": "missions"}))["ok"]
    await hank.call("message", {"channel": "missions", "text": "after leave"})
    await fox.wait_for("message")
    await asyncio.sleep(0.3)
    assert [m["text"] for m in dora.received("message")] == ["after join"]


# message ----------------------------------------------------------------------------------------------

async def test_message_reaches_every_member_but_the_sender(connect: Connect, tokens: dict[str, str]) -> None:
    members = {name: await connect(tokens[name]) for name in ("fox", "hank", "dora")}
    for client in members.values():
        assert (await client.call("join", {"channel": "missions"}))["ok"]
    outsider = await connect(tokens["ana"])  # may not read missions, so never joined
    text = f"to all members {uuid.uuid4().hex} ✓"
    ack = await members["hank"].call("message", {"channel": "missions", "text": text})
    assert set(ack) == {"ok", "id"} and ack["ok"] is True and isinstance(ack["id"], int)
    for name in ("fox", "dora"):
        [message] = await members[name].wait_for("message")
        assert set(message) == MESSAGE_KEYS
        assert (message["id"], message["channel"], message["from"], message["text"]) == \
            (ack["id"], "missions", "hank", text)
        ts = datetime.fromisoformat(message["ts"].replace("Z", "+00:00"))
        assert message["ts"].endswith("Z") and ts.utcoffset() == timezone.utc.utcoffset(None)
        assert abs((datetime.now(timezone.utc) - ts).total_seconds()) < 120
    await asyncio.sleep(0.3)
    assert members["hank"].received("message") == [] and outsider.received("message") == []
    history = await members["dora"].call("history", {"channel": "missions", "after_id": ack["id"] - 1})
    assert history["messages"] == members["fox"].received("message")  # history has the same shape


async def test_sender_other_sockets_do_receive(connect: Connect, tokens: dict[str, str]) -> None:
    first, second = await connect(tokens["hank"]), await connect(tokens["hank"])
    for client in (first, second):
        assert (await client.call("join", {"channel": "hq"}))["ok"]
    await first.call("message", {"channel": "hq", "text": "to my other tab"})
    assert [m["text"] for m in await second.wait_for("message")] == ["to my other tab"]


async def test_bare_string_goes_to_hq(connect: Connect, tokens: dict[str, str]) -> None:
    hank = await connect(tokens["hank"])
    assert (await hank.call("join", {"channel": "hq"}))["ok"]
    fox = await connect(tokens["fox"])  # may write hq without reading it
    ack = await fox.call("message", "a bare string")
    assert ack["ok"] is True
    [message] = await hank.wait_for("message")
    assert (message["channel"], message["from"], message["text"], message["id"]) == \
        ("hq", "fox", "a bare string", ack["id"])


async def test_ids_grow_by_one_per_channel(connect: Connect, tokens: dict[str, str]) -> None:
    dora = await connect(tokens["dora"])
    start_missions = (await dora.call("join", {"channel": "missions"}))["last_id"]
    start_hq = (await dora.call("join", {"channel": "hq"}))["last_id"]
    ids = [(await dora.call("message", {"channel": "missions", "text": f"m{i}"}))["id"] for i in range(3)]
    assert ids == [start_missions + 1, start_missions + 2, start_missions + 3]
    assert (await dora.call("message", {"channel": "hq", "text": "h"}))["id"] == start_hq + 1
    concurrent = await asyncio.gather(*(dora.call("message", {"channel": "hq", "text": f"c{i}"}) for i in range(10)))
    assert sorted(a["id"] for a in concurrent) == list(range(start_hq + 2, start_hq + 12))


async def test_text_size_limit_counts_utf8_bytes(connect: Connect, tokens: dict[str, str]) -> None:
    hank = await connect(tokens["hank"])
    exact = "€" * 5461 + "a"  # 16384 bytes in 5462 characters
    assert len(exact.encode()) == 16384
    assert (await hank.call("message", {"channel": "hq", "text": exact}))["ok"] is True
    for over in ("€" * 5462, "a" * 16385, "😀" * 4097):  # 16386, 16385, 16388 bytes; all under 16384 chars
        ack = await hank.call("message", {"channel": "hq", "text": over})
        assert ack["ok"] is False and ack["error"]["code"] == "payload_too_large", len(over)
    assert hank.sio.connected


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_packet_over_64_kib_closes_only_that_socket(connect: Connect, tokens: dict[str, str],
                                                          transport: str) -> None:
    bystander = await connect(tokens["dora"])
    assert (await bystander.call("join", {"channel": "hq"}))["ok"]
    offender = await connect(tokens["hank"], transports=[transport])
    await offender.sio.emit("message", {"channel": "hq", "text": "x" * 70_000})
    await offender.wait_disconnected()
    assert bystander.sio.connected
    sender = await connect(tokens["fox"])
    await sender.call("message", {"channel": "hq", "text": "still here"})
    assert [m["text"] for m in await bystander.wait_for("message")] == ["still here"]
    assert (await bystander.call("history", {"channel": "hq", "limit": 1}))["messages"][0]["text"] == "still here"


# history ---------------------------------------------------------------------------------------------

async def test_history_pages_oldest_first(connect: Connect, tokens: dict[str, str]) -> None:
    hank = await connect(tokens["hank"])
    texts = [f"page {i} {uuid.uuid4().hex[:6]}" for i in range(6)]
    ids = [(await hank.call("message", {"channel": "missions", "text": t}))["id"] for t in texts]
    before = ids[0] - 1
    everything = await hank.call("history", {"channel": "missions", "after_id": before, "limit": 500})
    assert set(everything) == {"ok", "messages", "truncated"} and everything["ok"] is True
    assert everything["truncated"] is False  # HQ keeps every message (no retention yet)
    assert [m["id"] for m in everything["messages"]] == ids
    assert [m["text"] for m in everything["messages"]] == texts
    assert all(set(m) == MESSAGE_KEYS and m["from"] == "hank" for m in everything["messages"])
    page = await hank.call("history", {"channel": "missions", "after_id": ids[1], "limit": 2})
    assert [m["id"] for m in page["messages"]] == ids[2:4]
    latest = await hank.call("history", {"channel": "missions", "limit": 3})
    assert [m["id"] for m in latest["messages"]] == ids[3:]
    default = await hank.call("history", {"channel": "missions"})
    assert [m["id"] for m in default["messages"]][-6:] == ids
    assert (await hank.call("history", {"channel": "missions", "after_id": ids[-1]}))["messages"] == []


@pytest.mark.parametrize("payload", [
    {"channel": "missions", "limit": 501}, {"channel": "missions", "limit": 0}, {"channel": "missions", "limit": -1},
    {"channel": "missions", "limit": "10"}, {"channel": "missions", "limit": 2.5},
    {"channel": "missions", "limit": True}, {"channel": "missions", "after_id": "3"},
    {"channel": "missions", "after_id": -1}, {"channel": "missions", "after_id": [1]}])
async def test_history_bad_parameters(connect: Connect, tokens: dict[str, str], payload: dict[str, Any]) -> None:
    hank = await connect(tokens["hank"])
    ack = await hank.call("history", payload)
    assert ack["ok"] is False and ack["error"]["code"] == "bad_request", payload
    assert (await hank.call("history", {"channel": "missions", "limit": 500}))["ok"] is True


# bad input ---------------------------------------------------------------------------------------------

BAD_PAYLOADS: list[tuple[str, Any]] = [
    (event, payload) for event in ("join", "leave", "history", "message")
    for payload in (None, [], ["missions"], 5, 1.5, True, {}, {"channel": 5}, {"channel": None},
                    {"channel": ["missions"]})
] + [(event, "missions") for event in ("join", "leave", "history")] + [
    ("message", {"channel": "hq"}), ("message", {"channel": "hq", "text": 5}),
    ("message", {"channel": "hq", "text": None}), ("message", {"channel": "hq", "text": ["x"]}),
    ("message", {"channel": "hq", "text": {"a": 1}}), ("message", {"text": "no channel"}),
    ("message", 42), ("message", {"channel": "hq", "text": "\ud800 lone surrogate"}),
    ("message", {"channel": "hq", "text": b"binary attachment"}), ("join", {"channel": b"hq"}),
    ("reauth", None), ("reauth", {}), ("reauth", {"token": 5}), ("reauth", "a-token-string"), ("reauth", [1]),
]


async def test_bad_payloads_are_bad_request(connect: Connect, tokens: dict[str, str]) -> None:
    dora = await connect(tokens["dora"])
    for number, (event, payload) in enumerate(BAD_PAYLOADS):
        if number and number % 30 == 0:
            dora = await connect(tokens["dora"])  # a fresh socket: stay inside the event burst budget
        ack = await dora.call(event, payload)
        assert ack == {"ok": False, "error": {"code": "bad_request", "message": ack["error"]["message"]}}, \
            (event, payload, ack)
    # Two arguments instead of one payload are bad input too.
    ack = await dora.sio.call("join", ("missions", "hq"), timeout=10)
    assert ack["error"]["code"] == "bad_request"
    assert dora.sio.connected and (await dora.call("join", {"channel": "missions"}))["ok"] is True


@pytest.mark.parametrize("event", ["join", "leave", "history", "message"])
async def test_unknown_channel_is_not_found(connect: Connect, tokens: dict[str, str], event: str) -> None:
    dora = await connect(tokens["dora"])
    for channel in ("nowhere", "", "x" * 5000, "Missions"):
        ack = await dora.call(event, {"channel": channel, "text": "t"})
        assert ack["ok"] is False and ack["error"]["code"] == "not_found", (event, channel[:20])
        assert len(ack["error"]["message"]) < 200


async def test_clearance_is_checked_before_anything_is_stored(connect: Connect, tokens: dict[str, str]) -> None:
    fox = await connect(tokens["fox"])
    dora = await connect(tokens["dora"])
    before = (await dora.call("join", {"channel": "missions"}))["last_id"]
    ack = await fox.call("message", {"channel": "missions", "text": "not allowed"})
    assert ack["ok"] is False and ack["error"]["code"] == "forbidden"
    assert (await dora.call("join", {"channel": "missions"}))["last_id"] == before
    await asyncio.sleep(0.2)
    assert dora.received("message") == []


# reauth -----------------------------------------------------------------------------------------------

async def test_reauth(shared_hq: HQServer, connect: Connect, tokens: dict[str, str], secret: bytes) -> None:
    hank = await connect(tokens["hank"])
    fresh = shared_hq.login("HANK")["access_token"]
    ack = await hank.call("reauth", {"token": fresh})
    assert ack == {"ok": True, "exp": jwt.decode(fresh, options={"verify_signature": False})["exp"]}
    other = await hank.call("reauth", {"token": tokens["dora"]})
    assert other["ok"] is False and other["error"]["code"] == "token_invalid"
    garbage = await hank.call("reauth", {"token": "garbage"})
    assert garbage["error"]["code"] == "token_invalid"
    now = int(time.time())
    expired = await hank.call("reauth", {"token": forge(secret, fresh, iat=now - 1000, exp=now - 100)})
    assert expired["error"]["code"] == "token_expired"
    assert hank.sio.connected and (await hank.call("join", {"channel": "hq"}))["ok"] is True
