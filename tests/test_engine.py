"""HQ's Engine.IO layer (hq/realtime/engine.py, hq/realtime/socket_server.py): the protocol to the letter, the
python-engineio / python-socketio internals it overrides, and that the lean path is taken."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections import Counter
import urllib.request
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import engineio
import pytest
import socketio
from aiohttp import web
from engineio.async_socket import AsyncSocket

from hq.app import HQ_KEY, create_app
from hq.config import load_settings
from hq.realtime.engine import LeanEngineServer, LeanSocket
from hq.realtime.socket_server import SocketServer

from .cli import run_cli_in_process
from .raw import RawPoller, RawWebSocket
from .sio import RecordingClient
from .support import HQServer, write_config, base_config, PASSWORD
from .test_fanout import TaskCounter
from .threaded_hq import bind_listener


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# the internals HQ overrides -------------------------------------------------------------------------
def params(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_the_engineio_internals_hq_overrides_keep_their_shape() -> None:
    assert engineio.__version__ if hasattr(engineio, "__version__") else True
    assert params(AsyncSocket._upgrade_websocket) == ["self", "environ"]
    assert params(AsyncSocket.receive) == ["self", "pkt"]
    assert params(AsyncSocket.send) == ["self", "pkt"]
    assert params(AsyncSocket.handle_post_request) == ["self", "environ"]
    assert params(AsyncSocket.schedule_ping) == ["self"]
    assert params(AsyncSocket.check_ping_timeout) == ["self"]
    assert params(AsyncSocket.close) == ["self", "wait", "abort", "reason"]
    assert "_upgrade_" in inspect.getsource(AsyncSocket.handle_get_request)  # the upgrade is looked up by name
    for attribute in ("queue", "last_ping", "connected", "upgrading", "upgraded", "closing", "closed"):
        assert attribute in inspect.getsource(engineio.base_socket.BaseSocket.__init__)
    assert params(engineio.AsyncServer._trigger_event) == ["self", "event", "args", "kwargs"]
    assert params(engineio.AsyncServer._log_error_once) == ["self", "message", "message_key"]
    connect = inspect.getsource(engineio.AsyncServer._handle_connect)
    # The socket is adopted in the connect event: it must come after the socket's creation and
    # before its first ping and its websocket.
    assert connect.index("AsyncSocket(self, sid)") < connect.index("_trigger_event('connect'") \
        < connect.index("schedule_ping()") < connect.index("handle_get_request")
    assert "monitor_clients" in inspect.signature(engineio.AsyncServer.__init__).parameters


def test_the_socketio_internals_hq_overrides_keep_their_shape() -> None:
    assert params(socketio.AsyncServer._handle_eio_message) == ["self", "eio_sid", "data"]
    assert params(socketio.AsyncServer._handle_event) == ["self", "eio_sid", "namespace", "id", "data"]
    assert params(socketio.AsyncServer._handle_connect) == ["self", "eio_sid", "namespace", "data"]
    assert params(socketio.AsyncServer._handle_disconnect) == ["self", "eio_sid", "namespace", "reason"]
    assert "engineio_server_class" in inspect.getsource(socketio.base_server.BaseServer.__init__)
    source = inspect.getsource(socketio.AsyncServer._handle_eio_message)
    assert "self._handle_event(" in source and "self._binary_packet" in source
    assert "self.environ[eio_sid]" in inspect.getsource(socketio.AsyncServer._handle_connect)


# the lean path is taken -----------------------------------------------------------------------------
@pytest.fixture
async def in_process(tmp_path: Path) -> AsyncIterator[tuple[str, web.Application]]:
    """HQ in this process (so its sockets and tasks can be inspected), agents made with the CLI."""
    listener = bind_listener()  # bound before the config names its port: no other process can take it
    port = listener.getsockname()[1]
    config = tmp_path / "config.toml"
    write_config(config, base_config(port, limits={"events_per_second": 1e6, "events_burst": 1000000}))
    for codename, role in (("fox", "field-operative"), ("hank", "handler")):
        result = run_cli_in_process(config, "agents", "add", codename, "--role", role, "--password-stdin",
                                    stdin=PASSWORD + "\n")
        assert result.returncode == 0, result.stderr
    app = create_app(load_settings(config), on_first_agent=lambda *_: None)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.SockSite(runner, listener)
    await site.start()
    yield f"http://127.0.0.1:{port}", app
    await runner.cleanup()


async def login(http: aiohttp.ClientSession, url: str, codename: str) -> str:
    async with http.post(f"{url}/api/auth/login", json={"username": codename, "password": PASSWORD}) as r:
        return (await r.json())["access_token"]


async def test_websocket_frames_are_read_and_answered_without_tasks(http: aiohttp.ClientSession,
                                                                   in_process: tuple[str, web.Application]) -> None:
    url, app = in_process
    sio = app[HQ_KEY].realtime.sio
    assert isinstance(sio, SocketServer) and isinstance(sio.eio, LeanEngineServer)
    hank = await RawWebSocket.open(http, url, await login(http, url, "hank"))
    fox = await RawWebSocket.open(http, url, await login(http, url, "fox"))
    assert (await fox.call("join", {"channel": "missions"}, 1))["ok"] is True
    sockets = list(sio.eio.sockets.values())
    assert len(sockets) == 2 and all(isinstance(s, LeanSocket) and s.ws is not None for s in sockets)
    assert all(s.queue.qsize() == 0 for s in sockets)
    await hank.call("message", {"channel": "missions", "text": "warm-up"}, 1)
    with TaskCounter() as tasks:
        for number in range(2, 52):
            ack = await hank.call("message", {"channel": "missions", "text": f"m{number}"}, number)
            assert ack["ok"] is True
    await fox.wait_frame(lambda f: '"m51"' in f)
    # python-engineio made a Task per frame, a Task per event and a queue hop per packet (≥ 100
    # tasks for 50 messages); the store's group commit may start one per group.
    # A message handler waits for its commit, so it is continued in one Task (hq/realtime/socket_server.py);
    # nothing else makes a Task per frame, per event or per packet written.
    resumed = tasks.names.count("_resume")
    assert resumed <= 50 and tasks.count - resumed <= 10, Counter(tasks.names)
    assert [e["text"] for e in fox.events("message")][-50:] == [f"m{n}" for n in range(2, 52)]
    await hank.close()
    await fox.close()


async def test_a_slow_reader_is_closed_at_the_buffer_cap(http: aiohttp.ClientSession, hq_factory) -> None:
    hq = hq_factory(server={"max_buffered_bytes": 262144, "max_packet_bytes": 65536},
                    limits={"events_per_second": 1e6, "events_burst": 1000000})
    # A reader that never reads: a raw TCP websocket whose receive buffer fills up.
    reader, writer = await asyncio.open_connection("127.0.0.1", hq.port)
    sock = writer.get_extra_info("socket")
    import socket as socket_module
    sock.setsockopt(socket_module.SOL_SOCKET, socket_module.SO_RCVBUF, 4096)
    token = hq.login("fox")["access_token"]
    writer.write(f"GET /socket.io/?EIO=4&transport=websocket&token={token} HTTP/1.1\r\nHost: x\r\n"
                 "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode())
    await writer.drain()
    await asyncio.sleep(0.2)

    def frame(text: str) -> bytes:  # a masked client text frame
        payload = text.encode()
        header = bytes([0x81, 0x80 | 126]) + len(payload).to_bytes(2, "big") if len(payload) > 125 \
            else bytes([0x81, 0x80 | len(payload)])
        return header + b"\0\0\0\0" + payload
    writer.write(frame("40") + frame('421["join",{"channel":"missions"}]'))
    await writer.drain()
    await asyncio.sleep(0.3)
    hank = await RecordingClient().connect(hq.url, hq.login("hank")["access_token"])
    text = "x" * 16000

    def fox_ended() -> list[dict[str, Any]]:
        return [line for line in hq.audit_lines() if line["event"] == "connection_ended" and line["codename"] == "fox"]
    # The kernel's socket buffers take a few MB first; then HQ's own buffer reaches the cap.
    for _ in range(1000):
        assert (await hank.call("message", {"channel": "missions", "text": text}))["ok"] is True
        if fox_ended():
            break
    assert [line["reason"] for line in fox_ended()] == ["transport error"]
    faults = urllib.request.urlopen(f"{hq.url}/metrics", timeout=10).read().decode()
    assert 'hq_protocol_faults_total{kind="slow_consumer"} 1.0' in faults
    assert hank.sio.connected  # the sender and the broadcast never waited for the slow reader
    writer.close()
    await hank.close()


# the protocol ---------------------------------------------------------------------------------------
async def test_a_close_packet_closes_the_websocket(http: aiohttp.ClientSession, shared_hq: HQServer) -> None:
    raw = await RawWebSocket.open(http, shared_hq.url, shared_hq.login("fox")["access_token"])
    started = time.monotonic()
    await raw.send("1")
    await raw.wait_closed(timeout=5)
    assert time.monotonic() - started < 3


async def test_a_close_packet_closes_the_polling_session(http: aiohttp.ClientSession, shared_hq: HQServer) -> None:
    poller = RawPoller(http, shared_hq.url)
    await poller.open()
    assert (await poller.connect(shared_hq.login("fox")["access_token"])).startswith("40")
    pending = asyncio.create_task(poller.get(timeout=5))
    await asyncio.sleep(0.1)
    assert await poller.post("1") == 200
    status, packets = await pending  # the waiting poll is answered at once, with the CLOSE
    assert status == 200 and packets[-1] == "1"
    assert (await poller.get(timeout=5))[0] == 400
    assert await poller.post("40") == 400


async def test_a_polling_client_that_stops_answering_pings_is_closed(http: aiohttp.ClientSession,
                                                                    hq_factory) -> None:
    hq = hq_factory(server={"ping_interval": 1.0, "ping_timeout": 1.0})
    poller = RawPoller(http, hq.url)
    opened = await poller.open()
    assert opened["pingInterval"] == 1000 and opened["pingTimeout"] == 1000
    assert (await poller.connect(hq.login("fox")["access_token"])).startswith("40")
    await asyncio.sleep(3.0)  # > pingInterval + pingTimeout, and no PONG was sent
    assert (await poller.get(timeout=5))[0] == 400
    ended = [line for line in hq.audit_lines() if line["event"] == "connection_ended"]
    assert [line["reason"] for line in ended] == ["ping timeout"]


async def test_a_websocket_client_that_answers_pings_stays(http: aiohttp.ClientSession, hq_factory) -> None:
    hq = hq_factory(server={"ping_interval": 0.5, "ping_timeout": 0.5})
    raw = await RawWebSocket.open(http, hq.url, hq.login("fox")["access_token"])  # answers PINGs
    await asyncio.sleep(2.5)
    assert not raw.closed.is_set()
    assert (await raw.call("join", {"channel": "missions"}, 1))["ok"] is True
    await raw.close()


@pytest.mark.parametrize("query", ["transport=abc", "transport=websocket", "transport=", "EIO=3&transport=polling"])
async def test_bad_handshakes_are_400(http: aiohttp.ClientSession, shared_hq: HQServer, query: str) -> None:
    eio = "" if "EIO=" in query else "EIO=4&"
    async with http.get(f"{shared_hq.url}/socket.io/?{eio}{query}") as response:
        assert response.status == 400


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
async def test_unsupported_methods_are_400(http: aiohttp.ClientSession, shared_hq: HQServer, method: str) -> None:
    async with http.request(method, f"{shared_hq.url}/socket.io/?EIO=4&transport=polling") as response:
        assert response.status == 400


async def test_a_client_ping_over_polling_is_refused_at_once(http: aiohttp.ClientSession,
                                                             shared_hq: HQServer) -> None:
    poller = RawPoller(http, shared_hq.url)
    await poller.open()
    started = time.monotonic()
    assert await poller.post("2probe", timeout=5) == 400
    assert time.monotonic() - started < 2


async def test_polling_upgrades_to_websocket_and_keeps_order(http: aiohttp.ClientSession, shared_hq: HQServer) -> None:
    # The JS and Python clients start on polling and upgrade: what was sent before arrives first.
    hank = await RecordingClient().connect(shared_hq.url, shared_hq.login("hank")["access_token"],
                                           transports=["polling", "websocket"])
    fox = await RecordingClient().connect(shared_hq.url, shared_hq.login("fox")["access_token"],
                                          transports=["polling", "websocket"])
    assert (await fox.call("join", {"channel": "missions"}))["ok"] is True
    ids = [(await hank.call("message", {"channel": "missions", "text": f"u{n}"}))["id"] for n in range(30)]
    received = await fox.wait_for("message", count=30)
    assert [m["id"] for m in received] == ids
    assert fox.sio.transport() == "websocket"
    await hank.close()
    await fox.close()


async def test_an_oversized_frame_closes_that_socket_only(http: aiohttp.ClientSession, shared_hq: HQServer) -> None:
    big = await RawWebSocket.open(http, shared_hq.url, shared_hq.login("fox")["access_token"])
    other = await RawWebSocket.open(http, shared_hq.url, shared_hq.login("hank")["access_token"])
    await big.send("42" + json.dumps(["message", {"channel": "hq", "text": "x" * 70000}]))
    await big.wait_closed()
    assert (await other.call("join", {"channel": "missions"}, 1))["ok"] is True
    await other.close()


async def test_pipelined_messages_keep_their_order(http: aiohttp.ClientSession, shared_hq: HQServer) -> None:
    # Events start in the order they arrive, and a waiting handler does not hold up the next frame.
    hank = await RawWebSocket.open(http, shared_hq.url, shared_hq.login("hank")["access_token"])
    fox = await RawWebSocket.open(http, shared_hq.url, shared_hq.login("fox")["access_token"])
    assert (await fox.call("join", {"channel": "missions"}, 1))["ok"] is True
    for number in range(1, 41):
        await hank.send(f"42{number}" + json.dumps(["message", {"channel": "missions", "text": f"p{number}"}]))
    await hank.wait_frame(lambda f: f.startswith("4340["))
    acks = {int(f[2:f.index("[")]): json.loads(f[f.index("["):])[0]["id"] for f in hank.frames if f.startswith("43")}
    ids = [acks[number] for number in range(1, 41)]
    assert ids == list(range(ids[0], ids[0] + 40))
    await fox.wait_frame(lambda f: '"p40"' in f)
    received = fox.events("message")
    assert [m["text"] for m in received] == [f"p{n}" for n in range(1, 41)] and [m["id"] for m in received] == ids
    await hank.close()
    await fox.close()


async def test_a_history_larger_than_the_buffer_cap_is_delivered(http: aiohttp.ClientSession, hq_factory) -> None:
    # HQ frames what it sends itself (hq/realtime/engine.py websocket_text_frame): every length encoding
    # (7-bit, 16-bit, 64-bit) goes through a real client's decoder here, multi-byte text included.
    hq = hq_factory(server={"max_buffered_bytes": 262144}, limits={"events_per_second": 1e6, "events_burst": 1000000})
    hank = await RawWebSocket.open(http, hq.url, hq.login("hank")["access_token"])
    dora = await RawWebSocket.open(http, hq.url, hq.login("dora")["access_token"])
    assert (await dora.call("join", {"channel": "hq"}, 1))["ok"] is True
    texts = [f"{number:02d}" + "é" * (number * 191) for number in range(40)]  # up to ~15 KB each
    for number, text in enumerate(texts):
        assert (await hank.call("message", {"channel": "hq", "text": text}, number))["ok"]
    await dora.wait_frame(lambda f: f.startswith('42["message"') and '"39' in f)
    assert [m["text"] for m in dora.events("message")] == texts
    history = await hank.call("history", {"channel": "hq", "limit": 40}, 99)  # ~600 KB in one frame
    assert [m["text"] for m in history["messages"]] == texts
    assert not hank.closed.is_set()
    await hank.close()
    await dora.close()


async def test_an_eager_handler_gets_the_error_of_what_it_waited_on() -> None:
    from hq.realtime.engine import ProtocolFaults
    from hq.realtime.socket_server import _resume

    outcomes: list[str] = []

    async def handler(fail: asyncio.Future[None]) -> None:
        try:
            await fail
            outcomes.append("no error")
        except ValueError:
            outcomes.append("caught")
            await asyncio.sleep(0)
            outcomes.append("went on")

    sio = SocketServer(client_events=frozenset(), faults=ProtocolFaults(), async_mode="aiohttp")
    fail: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    sio.run_eagerly(handler(fail))
    assert outcomes == []  # it waits
    fail.set_exception(ValueError("the store is down"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert outcomes == ["caught", "went on"]
    # The hand-made continuation (Python 3.11) on its own: an error and a cancellation reach the coroutine.
    fail2: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    coro = handler(fail2)
    task = asyncio.ensure_future(_resume(coro.send(None), coro))
    fail2.set_exception(ValueError("again"))
    await task
    assert outcomes[-2:] == ["caught", "went on"]
