"""agent_client against real HQ processes: login, connect, send, history, receiving, typed errors, TLS."""

from __future__ import annotations

import asyncio
import datetime
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest

from agent_client import (Agent, AgentClient, AgentClientError, AgentDisabled, BadRequest, CertificateError,
                          ClientClosed, ConnectionRefused, Forbidden, LoginFailed, Message, NotConnected,
                          NotFound, NotLoggedIn, PayloadTooLarge, RateLimited, TooManyAttempts, Unavailable)

from .keys import write_self_signed
from .support import PASSWORD, HQServer, free_port
from .threaded_hq import make_in_process_server

MakeClient = Callable[..., Awaitable[AgentClient]]


# helpers shared with the other agent_client test modules ------------------------------------------
@pytest.fixture
async def clients() -> AsyncIterator[MakeClient]:
    """``await clients(hq, "fox", ["missions"])``: a logged-in (and connected) client, closed afterwards."""
    made: list[AgentClient] = []

    async def make(hq: HQServer, codename: str | None = None, channels: list[str] | None = None,
                   **options: Any) -> AgentClient:
        client = AgentClient(hq.url, **options)
        made.append(client)
        if codename is not None:
            await client.login(codename, PASSWORD)
        if channels is not None:
            await client.connect(channels)
        return client

    yield make
    for client in made:
        await client.close()


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def take(client: AgentClient, count: int, timeout: float = 10.0) -> list[Message]:
    """The next ``count`` messages of ``async for``, failing after ``timeout`` seconds."""
    got: list[Message] = []

    async def read() -> None:
        async for message in client:
            got.append(message)
            if len(got) == count:
                return

    try:
        await asyncio.wait_for(read(), timeout)
    except asyncio.TimeoutError:
        pytest.fail(f"received {len(got)} of {count} messages: {[m.id for m in got]}")
    return got


async def last_id(client: AgentClient, channel: str = "missions") -> int:
    """The channel's newest id (0 when empty), so tests on a shared HQ can count from it."""
    latest = await client.history(channel, limit=1)
    return latest[-1].id if latest else 0


async def nothing_more(client: AgentClient, settle: float = 0.5) -> None:
    """Assert the inbox holds no further message after a short settle time (a negative check)."""
    await asyncio.sleep(settle)
    assert client._inbox.qsize() == 0, "unexpected extra messages"


# basics --------------------------------------------------------------------------------------------
async def test_login_returns_the_stored_agent(shared_hq: HQServer, clients: MakeClient) -> None:
    client = await clients(shared_hq)
    agent = await client.login("FOX", PASSWORD)  # codenames match regardless of case
    assert agent == Agent("fox", "field-operative")
    assert client.agent == agent
    assert client.access_token.count(".") == 2 and client.refresh_token


async def test_messages_arrive_by_callback_and_async_for_in_order(shared_hq: HQServer, clients: MakeClient) -> None:
    fox = await clients(shared_hq, "fox", ["missions"])
    hank = await clients(shared_hq, "hank", [])
    seen: list[Message] = []
    fox.on_message(seen.append)
    base = await last_id(hank)
    ids = [await hank.send("missions", f"order {n}") for n in range(1, 4)]
    assert ids == [base + 1, base + 2, base + 3]
    received = await take(fox, 3)
    assert [m.id for m in received] == ids
    assert [m.text for m in received] == ["order 1", "order 2", "order 3"]
    first = received[0]
    assert (first.channel, first.sender) == ("missions", "hank")
    assert datetime.datetime.fromisoformat(first.ts.replace("Z", "+00:00")).tzinfo is not None
    await wait_until(lambda: len(seen) == 3, what="callbacks")
    assert seen == received
    assert fox.stats.delivered == 3 and fox.stats.duplicates_dropped == 0


async def test_async_callbacks_are_awaited_in_order(shared_hq: HQServer, clients: MakeClient) -> None:
    fox = await clients(shared_hq, "fox", ["missions"], inbox=False)
    hank = await clients(shared_hq, "hank", [])
    seen: list[int] = []

    @fox.on_message
    async def slow(message: Message) -> None:
        await asyncio.sleep(0.05 if not seen else 0)  # a slow first callback must not reorder
        seen.append(message.id)

    ids = [await hank.send("missions", f"m{n}") for n in range(4)]
    await wait_until(lambda: len(seen) == 4, what="four callbacks")
    assert seen == ids
    with pytest.raises(AgentClientError) as caught:
        await fox.__anext__()
    assert caught.value.code == "no_inbox"


async def test_own_sends_are_in_the_stream_exactly_once(shared_hq: HQServer, clients: MakeClient) -> None:
    hank = await clients(shared_hq, "hank", ["missions"])
    dora = await clients(shared_hq, "dora", [])
    base = await last_id(dora)
    assert await hank.send("missions", "mine 1") == base + 1
    assert await dora.send("missions", "theirs") == base + 2
    assert await hank.send("missions", "mine 2") == base + 3
    stream = await take(hank, 3)
    assert [(m.id - base, m.sender) for m in stream] == [(1, "hank"), (2, "dora"), (3, "hank")]
    await nothing_more(hank)


async def test_connect_delivers_from_now_on_and_after_ids_replays(shared_hq: HQServer, clients: MakeClient) -> None:
    hank = await clients(shared_hq, "hank", [])
    before = [await hank.send("missions", f"before {n}") for n in range(3)]
    fresh = await clients(shared_hq, "fox", ["missions"])
    replay = await clients(shared_hq, "fox")
    await replay.connect(["missions"], after_ids={"missions": before[0]})
    after = await hank.send("missions", "after")
    assert [m.id for m in await take(fresh, 1)] == [after]
    assert [m.id for m in await take(replay, 3)] == [before[1], before[2], after]
    await nothing_more(fresh)
    await nothing_more(replay, settle=0)


async def test_history_pages(hq: HQServer, clients: MakeClient) -> None:
    hank = await clients(hq, "hank", [])  # a fresh HQ: the channel starts empty
    assert await hank.history("missions") == []
    for n in range(1, 6):
        await hank.send("missions", f"h{n}")
    assert [m.id for m in await hank.history("missions")] == [1, 2, 3, 4, 5]
    assert [m.id for m in await hank.history("missions", after_id=2)] == [3, 4, 5]
    assert [m.id for m in await hank.history("missions", after_id=1, limit=2)] == [2, 3]
    assert [m.text for m in await hank.history("missions", limit=2)] == ["h4", "h5"]
    assert await hank.history("missions", after_id=5) == []


async def test_async_with_closes_and_later_calls_raise(shared_hq: HQServer) -> None:
    async with AgentClient(shared_hq.url) as client:
        await client.login("hank", PASSWORD)
        await client.connect(["missions"])
        assert client.connected
    assert not client.connected
    with pytest.raises(ClientClosed) as caught:
        await client.send("missions", "late")
    assert caught.value.code == "closed"
    with pytest.raises(StopAsyncIteration):
        await client.__anext__()


async def test_logout_ends_the_session_and_the_stream(shared_hq: HQServer, clients: MakeClient) -> None:
    fox = await clients(shared_hq, "fox", ["missions"])
    token = fox.access_token
    await fox.logout()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(fox.__anext__(), 5)
    request = urllib.request.Request(f"{shared_hq.url}/api/auth/me", headers={"Authorization": f"Bearer {token}"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)
    assert caught.value.code == 401


# typed refusals ----------------------------------------------------------------------------------------
async def test_wrong_password_and_unknown_agent_raise_login_failed(shared_hq: HQServer, clients: MakeClient) -> None:
    client = await clients(shared_hq)
    for codename, password in (("fox", "wrong password, surely"), ("nobody", PASSWORD)):
        with pytest.raises(LoginFailed) as caught:
            await client.login(codename, password)
        assert caught.value.code == "invalid_credentials"
    assert client.agent is None


async def test_too_many_attempts_carries_retry_after(shared_hq: HQServer, clients: MakeClient) -> None:
    shared_hq.add_agent("locked", "analyst")
    client = await clients(shared_hq)
    with pytest.raises(TooManyAttempts) as caught:
        for _ in range(10):
            with pytest.raises(LoginFailed):
                await client.login("locked", "not the password at all")
    assert caught.value.code == "too_many_attempts"
    assert caught.value.retry_after > 0
    with pytest.raises(TooManyAttempts):  # even the right password, while limited
        await client.login("locked", PASSWORD)


async def test_disabled_agent_raises_agent_disabled_at_login_and_connect(shared_hq: HQServer,
                                                                         clients: MakeClient) -> None:
    shared_hq.add_agent("benched", "field-operative")
    early = await clients(shared_hq, "benched")  # logged in before the disable, connects after it
    assert shared_hq.cli("agents", "disable", "benched").returncode == 0
    with pytest.raises(AgentDisabled) as caught:
        await (await clients(shared_hq)).login("benched", PASSWORD)
    assert caught.value.code == "agent_disabled"
    with pytest.raises(AgentDisabled):
        await early.connect(["missions"])


async def test_revoked_session_is_refused_at_connect(shared_hq: HQServer, clients: MakeClient) -> None:
    shared_hq.add_agent("rotated", "field-operative")
    fox = await clients(shared_hq, "rotated")
    result = shared_hq.cli("agents", "passwd", "rotated", "--password-stdin", stdin="another long password\n")
    assert result.returncode == 0, result.stderr
    with pytest.raises(ConnectionRefused) as caught:
        await fox.connect(["missions"])
    assert caught.value.code == "token_revoked"


async def test_clearance_refusals_raise_forbidden(shared_hq: HQServer, clients: MakeClient) -> None:
    ana = await clients(shared_hq, "ana")
    with pytest.raises(Forbidden) as caught:
        await ana.connect(["missions"])  # analysts may not read missions
    assert caught.value.code == "forbidden"
    fox = await clients(shared_hq, "fox", ["missions"])
    with pytest.raises(Forbidden):
        await fox.send("missions", "field operatives may not write missions")
    with pytest.raises(Forbidden):
        await fox.history("hq")  # reading hq needs handler


async def test_unknown_channel_raises_not_found(shared_hq: HQServer, clients: MakeClient) -> None:
    with pytest.raises(NotFound) as caught:
        await clients(shared_hq, "dora", ["no-such-channel"])
    assert caught.value.code == "not_found"
    dora = await clients(shared_hq, "dora", [])
    with pytest.raises(NotFound):
        await dora.send("no-such-channel", "hello?")
    with pytest.raises(NotFound):
        await dora.history("no-such-channel")


async def test_bad_input_raises_bad_request_and_too_large(shared_hq: HQServer, clients: MakeClient) -> None:
    hank = await clients(shared_hq, "hank", [])
    with pytest.raises(PayloadTooLarge) as too_large:
        await hank.send("missions", "x" * 16385)
    assert too_large.value.code == "payload_too_large"
    with pytest.raises(PayloadTooLarge):
        await hank.send("missions", "é" * 8193)  # 16386 bytes of UTF-8
    for call in (hank.send("missions", ""), hank.history("missions", after_id=-1),
                 hank.history("missions", limit=501)):
        with pytest.raises(BadRequest) as caught:
            await call
        assert caught.value.code == "bad_request"
    assert hank.connected  # bad input never costs the connection


async def test_flooding_raises_rate_limited(shared_hq: HQServer, clients: MakeClient) -> None:
    dora = await clients(shared_hq, "dora", [])
    results = await asyncio.gather(*(dora.history("hq", limit=1) for _ in range(150)), return_exceptions=True)
    limited = [r for r in results if isinstance(r, RateLimited)]
    assert limited and all(r.code == "rate_limited" for r in limited)
    assert all(isinstance(r, (list, RateLimited)) for r in results), results


async def test_calls_out_of_order_raise_typed_errors(shared_hq: HQServer, clients: MakeClient) -> None:
    client = await clients(shared_hq)
    with pytest.raises(NotLoggedIn):
        await client.connect(["missions"])
    await client.login("hank", PASSWORD)
    with pytest.raises(NotConnected) as caught:
        await client.send("missions", "too early")
    assert caught.value.code == "not_connected"


async def test_unreachable_hq_raises_unavailable() -> None:
    client = AgentClient(f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(Unavailable) as caught:
            await client.login("fox", PASSWORD)
        assert caught.value.code == "unavailable"
    finally:
        await client.close()


# TLS -----------------------------------------------------------------------------------------------------
@pytest.fixture
def tls_hq(tmp_path: Path) -> Any:
    """HQ over TLS with a self-signed certificate made for the test (``ca_file`` trusts it)."""
    cert, key = write_self_signed(tmp_path)
    server = make_in_process_server(tmp_path / "tls", {"fox": "field-operative", "hank": "handler"},
                         server={"tls_cert": str(cert), "tls_key": str(key)})
    yield server.start()
    server.stop()


async def test_tls_with_ca_file_works_and_unknown_certificates_are_refused(tls_hq: HQServer,
                                                                           clients: MakeClient) -> None:
    fox = await clients(tls_hq, "fox", ["missions"], ca_file=str(tls_hq.ca_file))
    hank = await clients(tls_hq, "hank", [], ca_file=str(tls_hq.ca_file))
    assert await hank.send("missions", "over wss") == 1
    assert [m.text for m in await take(fox, 1)] == ["over wss"]
    untrusting = await clients(tls_hq)  # verifies against the system CAs only
    with pytest.raises(CertificateError) as caught:
        await untrusting.login("fox", PASSWORD)
    assert caught.value.code == "certificate_invalid"
