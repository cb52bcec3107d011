"""agent_client resilience over real HQ processes: token expiry on live sockets, HQ crashes and
restarts, and the terminal refusals (disable, logout, reused refresh token).

The restart and refusal tests print figures for the issue's closing note (run with ``-s``).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.error
import urllib.request
from typing import Any, Callable

import pytest

from agent_client import (AgentClient, AgentDisabled, ConnectionLost, Message, RateLimited, SessionEnded,
                          TokenReused)

from .cli import run_cli
from .support import PASSWORD, HQServer
from .test_agent_client import MakeClient, clients, wait_until  # noqa: F401  (fixture import)

SHORT_TOKENS = {"access_ttl": 3, "expiry_warning": 1}


def post_json(url: str, body: dict[str, Any] | None = None, token: str | None = None) -> tuple[int, Any]:
    """A blocking JSON POST, as another program would make it; returns (status, body)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


async def stream_until_error(client: AgentClient, received: list[Message]) -> BaseException | None:
    """Read ``async for`` into ``received`` until it ends; return what it raised (None on a clean end)."""
    try:
        async for message in client:
            received.append(message)
    except Exception as exc:
        return exc
    return None


def connections_accepted(hq: HQServer, codename: str) -> int:
    """How many sockets HQ accepted for ``codename`` (from its audit log)."""
    return sum(1 for line in hq.audit_lines()
               if line.get("event") == "connection_accepted" and line.get("codename") == codename)


def fox_stopped_at(client: AgentClient, since: float) -> float:
    """Seconds from ``since`` to the moment the client recorded its terminal error."""
    assert client.stats.stopped_at is not None
    return client.stats.stopped_at - since


# token expiry ------------------------------------------------------------------------------------------
async def test_stays_connected_across_several_token_expiries(hq_factory: Callable[..., HQServer],
                                                             clients: MakeClient) -> None:
    hq = hq_factory(auth=SHORT_TOKENS)
    fox = await clients(hq, "fox", ["missions"])
    hank = await clients(hq, "hank", [])
    received: list[Message] = []
    fox.on_message(received.append)
    sent: list[int] = []
    deadline = time.monotonic() + 60
    # Keep talking until both sockets have been re-authenticated at least three times (≈ 3 expiries).
    while min(fox.stats.reauths, hank.stats.reauths) < 3:
        assert time.monotonic() < deadline, (fox.stats, hank.stats)
        sent.append(await hank.send("missions", f"tick {len(sent)}"))
        await asyncio.sleep(0.2)
    await wait_until(lambda: len(received) >= len(sent), what="every message")
    assert [m.id for m in received] == sent == list(range(1, len(sent) + 1))
    # Never dropped: one socket each, no reconnects, and HQ saw one connection per agent.
    assert (fox.stats.connects, fox.stats.disconnects) == (1, 0)
    assert (hank.stats.connects, hank.stats.disconnects) == (1, 0)
    assert fox.refreshes >= 3 and hank.refreshes >= 3
    assert connections_accepted(hq, "fox") == 1 and connections_accepted(hq, "hank") == 1


async def test_token_expiring_from_hq_prompts_an_early_renewal(hq_factory: Callable[..., HQServer],
                                                                clients: MakeClient) -> None:
    # HQ warns 8 s before a 10 s token expires (≈ 2 s in), well before the client's own timer (≈ 4.5 s).
    hq = hq_factory(auth={"access_ttl": 10, "expiry_warning": 8})
    fox = await clients(hq, "fox", ["missions"])
    await wait_until(lambda: fox.stats.reauths_on_warning >= 2, timeout=30, what="two warned renewals")
    assert fox.stats.expiry_warnings >= 2
    assert (fox.stats.connects, fox.stats.disconnects) == (1, 0)


# a dropped link while the channel goes on ------------------------------------------------------------
class CuttableProxy:
    """A real TCP relay to HQ that the test can cut (connections dropped, port closed) and restore."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0  # until the first start: then the port the kernel picked, kept across cuts
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}


async def test_a_listener_cut_off_catches_up_on_what_it_missed(hq: HQServer, clients: MakeClient) -> None:
    proxy = CuttableProxy(hq.port)
    await proxy.start()
    fox = AgentClient(proxy.url, backoff_initial=0.1, backoff_max=0.5)
    try:
        await fox.login("fox", PASSWORD)
        await fox.connect(["missions"])
        hank = await clients(hq, "hank", [])
        received: list[Message] = []
        fox.on_message(received.append)
        before = [await hank.send("missions", f"before {n}") for n in range(5)]
        await wait_until(lambda: len(received) == 5, what="live messages")
        await proxy.cut()
        await wait_until(lambda: not fox.connected, what="the listener to notice the cut")
        missed = [await hank.send("missions", f"missed {n}") for n in range(30)]
        await proxy.start()
        await wait_until(lambda: fox.connected, what="the listener to reconnect")
        after = [await hank.send("missions", f"after {n}") for n in range(5)]
        await wait_until(lambda: len(received) >= 40, what="every message")
        await asyncio.sleep(0.3)
        assert [m.id for m in received] == before + missed + after == list(range(1, 41))
        assert [m.text for m in received[5:35]] == [f"missed {n}" for n in range(30)]
        assert fox.stats.recovered >= 30 and fox.stats.disconnects == 1 and fox.refreshes == 0
    finally:
        await fox.close()
        await proxy.cut()


# crash and restart -----------------------------------------------------------------------------------
@pytest.mark.parametrize("auth", [{}, SHORT_TOKENS], ids=["default-tokens", "3s-tokens"])
@pytest.mark.real_process  # SIGKILL needs a process to kill
async def test_sigkill_and_restart_deliver_every_message_once_in_order(
        hq_factory: Callable[..., HQServer], clients: MakeClient, auth: dict[str, Any]) -> None:
    hq = hq_factory(auth=auth)
    fox = await clients(hq, "fox", ["missions"])
    hank = await clients(hq, "hank", [])
    received: list[int] = []
    fox.on_message(lambda m: received.append(m.id))
    total, acked, ambiguous = 60, [], []

    async def send(n: int) -> None:
        while True:
            try:
                acked.append(await hank.send("missions", f"msg {n}", timeout=60))
                return
            except RateLimited:  # not processed by HQ: safe to send again
                await asyncio.sleep(0.5)
            except ConnectionLost:  # dropped mid-call: HQ may have stored it; never resend blindly
                ambiguous.append(f"msg {n}")
                return

    # Sends start every 0.1 s whatever the server's state: before, during and after the crash.
    senders: list[asyncio.Task[None]] = []
    for n in range(total):
        senders.append(asyncio.create_task(send(n)))
        if n == 20:
            await wait_until(lambda: len(acked) >= 15, what="messages before the crash")
            hq.stop(signal.SIGKILL)
            killed_at = time.monotonic()
        if n == 30:
            await asyncio.to_thread(hq.start)
            restarted_at = time.monotonic()
        await asyncio.sleep(0.1)
    await asyncio.gather(*senders)

    stored = await hank.history("missions", after_id=0, limit=500)
    stored_ids = [m.id for m in stored]
    assert stored_ids == list(range(1, len(stored) + 1))
    await wait_until(lambda: len(received) >= len(stored), timeout=30, what="the listener to catch up")
    await asyncio.sleep(0.3)  # a duplicate arriving late would show up here
    # Exactly once and in order: the listener's ids are the channel's ids, nothing more.
    assert received == stored_ids
    assert set(acked) <= set(stored_ids)
    stored_texts = {m.text for m in stored}
    assert len(stored) == len(acked) + sum(text in stored_texts for text in ambiguous)
    assert fox.stats.disconnects >= 1 and fox.stats.connects >= 2 and fox.error is None
    if not auth:  # a still-valid access token is reused: no refresh token is spent around a crash
        assert fox.refreshes == 0 and hank.refreshes == 0
    print(f"\n[restart figures, {auth or 'default tokens'}] sends attempted {total}, acked {len(acked)}, "
          f"dropped mid-call {len(ambiguous)} (stored anyway: {sum(t in stored_texts for t in ambiguous)}), "
          f"stored {len(stored)}, delivered to listener {len(received)} "
          f"(unique {len(set(received))}, in order {received == sorted(received)}), "
          f"duplicates dropped by the client {fox.stats.duplicates_dropped}, recovered from history "
          f"{fox.stats.recovered}, catch-up requests "
          f"{fox.stats.catch_up_requests}, downtime {restarted_at - killed_at:.1f} s, "
          f"listener reconnects {fox.stats.connects - 1}, token refreshes {fox.refreshes}")


# terminal refusals -----------------------------------------------------------------------------------------
async def test_disable_in_another_process_stops_the_client(hq: HQServer, clients: MakeClient) -> None:
    fox = await clients(hq, "fox", ["missions"])
    received: list[Message] = []
    reader = asyncio.create_task(stream_until_error(fox, received))
    started = time.monotonic()
    result = await asyncio.to_thread(run_cli, hq.config, "agents", "disable", "fox")
    cli_done = time.monotonic()
    assert result.returncode == 0, result.stderr
    error = await asyncio.wait_for(reader, 10)
    stopped = fox_stopped_at(fox, started)
    assert isinstance(error, AgentDisabled) and error.code == "agent_disabled"
    with pytest.raises(AgentDisabled):
        await fox.send("missions", "still there?")
    with pytest.raises(AgentDisabled):
        await fox.__anext__()
    print(f"\n[figures] agents disable in another process: client stopped {stopped:.2f} s after the CLI "
          f"started (the CLI process itself ran {cli_done - started:.2f} s)")


async def test_logout_elsewhere_ends_the_client_with_session_ended(hq: HQServer, clients: MakeClient) -> None:
    fox = await clients(hq, "fox", ["missions"])
    reader = asyncio.create_task(stream_until_error(fox, []))
    started = time.monotonic()
    status, _ = await asyncio.to_thread(post_json, f"{hq.url}/api/auth/logout", None, fox.access_token)
    assert status == 204
    error = await asyncio.wait_for(reader, 10)
    elapsed = fox_stopped_at(fox, started)
    assert isinstance(error, SessionEnded) and error.reason == "logged_out"
    with pytest.raises(SessionEnded):
        await fox.history("missions")
    print(f"\n[figures] logout request sent -> client stopped: {elapsed:.3f} s")


async def test_refreshing_with_a_stolen_and_spent_token_is_terminal(hq_factory: Callable[..., HQServer],
                                                                   clients: MakeClient) -> None:
    # No refresh grace window: fox's own refresh comes within 5 s of the thief's, which the default
    # window would take for a retry after a lost reply (tests/test_refresh_grace.py covers that).
    hq = hq_factory(auth={"access_ttl": 8, "expiry_warning": 1, "refresh_grace": 0})
    fox = await clients(hq, "fox")
    # A thief spends fox's refresh token first; fox's own refresh (due after 3.5 s) is then a reuse.
    status, thief = await asyncio.to_thread(post_json, f"{hq.url}/api/auth/refresh",
                                            {"refresh_token": fox.refresh_token})
    assert status == 200
    await fox.connect(["missions"])
    error = await asyncio.wait_for(stream_until_error(fox, []), 15)
    assert isinstance(error, TokenReused) and error.code == "token_reused"
    with pytest.raises(TokenReused):
        await fox.send("missions", "x")
    # HQ revoked the whole session: the thief's fresh tokens are dead too.
    status, body = await asyncio.to_thread(post_json, f"{hq.url}/api/auth/refresh",
                                           {"refresh_token": thief["refresh_token"]})
    assert status == 401
    request = urllib.request.Request(f"{hq.url}/api/auth/me",
                                     headers={"Authorization": f"Bearer {thief['access_token']}"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        await asyncio.to_thread(urllib.request.urlopen, request, None, 10)
    assert caught.value.code == 401


async def test_a_thief_reusing_a_spent_token_ends_the_owners_session(hq_factory: Callable[..., HQServer],
                                                                    clients: MakeClient) -> None:
    hq = hq_factory(auth={**SHORT_TOKENS, "refresh_grace": 0})  # as above: no grace window
    fox = await clients(hq, "fox", ["missions"])
    stolen = fox.refresh_token
    await wait_until(lambda: fox.refreshes >= 1, what="fox to refresh")
    reader = asyncio.create_task(stream_until_error(fox, []))
    status, body = await asyncio.to_thread(post_json, f"{hq.url}/api/auth/refresh", {"refresh_token": stolen})
    assert (status, body["error"]["code"]) == (401, "token_reused")
    error = await asyncio.wait_for(reader, 10)
    assert isinstance(error, SessionEnded) and error.reason == "revoked"
