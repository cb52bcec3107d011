"""Limits: failed-login throttling per codename and per address (429 with Retry-After, even for the
right password), X-Forwarded-For only from trusted proxies, and the per-socket event budget.

One real HQ trusts 127.0.0.1 as a proxy, so each test can speak for its own client addresses via
X-Forwarded-For; requests from 127.0.0.2 (not trusted) show the header is otherwise ignored. Its
event rate is nearly zero, so the burst of 40 is exact however slow the machine is.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Iterator

import aiohttp
import pytest

from hq.auth.limits import LoginThrottle, TokenBucket

from .inprocess import ClockedHQ, ClockedHQFactory, clocked_hq  # noqa: F401  (in-process HQ, manual clock)
from .sio import RecordingClient
from .support import PASSWORD, HQServer, make_server

WINDOW = 900


# In-process -------------------------------------------------------------------------------------------

async def test_throttle_per_codename_window_and_case() -> None:
    throttle = LoginThrottle(per_codename=5, per_address=20, window=WINDOW)
    for i in range(5):
        assert await throttle.retry_after("Ana", "10.0.0.1", now=100.0 + i) == 0
        await throttle.record_failure("Ana", "10.0.0.1", now=100.0 + i)
    assert await throttle.retry_after("ana", "10.9.9.9", now=110.0) == WINDOW - 10  # until the 1st leaves
    assert await throttle.retry_after("ANA", "10.9.9.9", now=99.0 + WINDOW) == 1
    assert await throttle.retry_after("ana", "10.9.9.9", now=99.5 + WINDOW) == 1  # rounded up
    assert await throttle.retry_after("ana", "10.9.9.9", now=100.0 + WINDOW) == 0  # a slot is free again
    assert await throttle.retry_after("bob", "10.0.0.1", now=110.0) == 0


async def test_throttle_per_address_and_success() -> None:
    throttle = LoginThrottle(per_codename=5, per_address=20, window=WINDOW)
    for i in range(20):
        await throttle.record_failure(f"user{i}", "10.0.0.2", now=float(i))
    assert await throttle.retry_after("someone", "10.0.0.2", now=30.0) > 0
    assert await throttle.retry_after("someone", "10.0.0.3", now=30.0) == 0
    for i in range(4):
        await throttle.record_failure("cara", "10.0.0.4", now=float(i))
    await throttle.record_success("CARA")  # a success clears the codename's count ...
    await throttle.record_failure("cara", "10.0.0.4", now=5.0)
    assert await throttle.retry_after("cara", "10.0.0.5", now=6.0) == 0
    # ... but never the address's.
    for i in range(15):
        await throttle.record_failure(f"x{i}", "10.0.0.4", now=7.0)
    assert await throttle.retry_after("cara", "10.0.0.4", now=8.0) > 0


def test_token_bucket_burst_and_refill(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("hq.auth.limits.time.monotonic", lambda: clock[0])
    bucket = TokenBucket(rate=20.0, burst=40)
    assert all(bucket.take() for _ in range(40))
    assert not bucket.take()
    clock[0] += 0.11  # two events' worth at 20/s
    assert bucket.take() and bucket.take() and not bucket.take()
    clock[0] += 60  # refills to the burst, never beyond
    assert sum(bucket.take() for _ in range(100)) == 40


# A real HQ --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HQServer]:
    agents = {"ana": "analyst", "bo": "handler"}
    server = make_server(tmp_path_factory.mktemp("limits"), agents,
                         server={"trusted_proxies": ["127.0.0.1/32"]},
                         limits={"events_per_second": 0.001}).start()
    yield server
    server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def untrusted_http() -> AsyncIterator[aiohttp.ClientSession]:
    """Requests from 127.0.0.2, which is not a trusted proxy."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as session:
        yield session


async def attempt(http: aiohttp.ClientSession, server: HQServer | ClockedHQ, codename: str, password: str,
                  forwarded_for: str | None = None) -> tuple[int, dict[str, Any], str | None]:
    """One login; returns status, body and Retry-After."""
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    async with http.post(f"{server.url}/api/auth/login", json={"username": codename, "password": password},
                         headers=headers) as r:
        return r.status, await r.json(), r.headers.get("Retry-After")


def assert_limited(result: tuple[int, dict[str, Any], str | None]) -> None:
    status, body, retry_after = result
    assert status == 429 and body["error"]["code"] == "too_many_attempts", result
    assert retry_after is not None and retry_after.isdigit() and 0 < int(retry_after) <= WINDOW


async def test_five_failures_lock_the_codename(http: aiohttp.ClientSession, limited: HQServer) -> None:
    for _ in range(5):
        status, body, _ = await attempt(http, limited, "ana", "wrong password!", "10.1.0.1")
        assert status == 401 and body["error"]["code"] == "invalid_credentials"
    # From anywhere, in any case, even with the right password.
    assert_limited(await attempt(http, limited, "ana", PASSWORD, "10.1.0.2"))
    assert_limited(await attempt(http, limited, "ANA", PASSWORD, "10.1.0.3"))
    assert_limited(await attempt(http, limited, "ana", "wrong password!", "10.1.0.1"))
    # Other agents from the same address are untouched (5 < 20).
    assert (await attempt(http, limited, "bo", PASSWORD, "10.1.0.1"))[0] == 200


async def test_twenty_failures_lock_the_address(http: aiohttp.ClientSession, limited: HQServer) -> None:
    for i in range(20):  # one failure each for 20 codenames: no codename reaches its limit
        assert (await attempt(http, limited, f"nobody{i}", "wrong password!", "10.2.0.1"))[0] == 401
    assert_limited(await attempt(http, limited, "bo", PASSWORD, "10.2.0.1"))
    assert (await attempt(http, limited, "bo", PASSWORD, "10.2.0.2"))[0] == 200


async def test_forwarded_for_is_ignored_from_untrusted_peers(untrusted_http: aiohttp.ClientSession,
                                                             limited: HQServer) -> None:
    # 127.0.0.2 is no proxy: each request claims another address, all are counted against the peer.
    for i in range(20):
        result = await attempt(untrusted_http, limited, f"ghost{i}", "wrong password!", f"10.3.0.{i}")
        assert result[0] == 401, result
    assert_limited(await attempt(untrusted_http, limited, "bo", PASSWORD, "10.3.9.9"))


async def test_event_burst_then_rate_limited(limited: HQServer, http: aiohttp.ClientSession) -> None:
    status, body, _ = await attempt(http, limited, "bo", PASSWORD, "10.4.0.1")
    assert status == 200
    client, other = RecordingClient(), RecordingClient()
    try:
        await client.connect(limited.url, body["access_token"])
        answers = [await client.call("history", {"channel": "hq", "limit": 1}) for _ in range(45)]
        assert [a["ok"] for a in answers] == [True] * 40 + [False] * 5
        assert {a["error"]["code"] for a in answers[40:]} == {"rate_limited"}
        # Still connected, still answered; and the budget is per socket.
        assert client.sio.connected and client.disconnected_at is None
        assert (await client.call("join", {"channel": "hq"}))["error"]["code"] == "rate_limited"
        await other.connect(limited.url, body["access_token"])
        assert (await other.call("join", {"channel": "hq"}))["ok"] is True
    finally:
        await client.close()
        await other.close()


# The window passing, on HQ's manual clock ---------------------------------------------------------------
async def test_the_window_passing_unlocks_the_codename(clocked_hq: ClockedHQFactory,
                                                       http: aiohttp.ClientSession) -> None:
    # In-process on a manual clock (tests/inprocess.py): the five failures are made at one instant,
    # so Retry-After and the moment the lock lifts are exact.
    hq = await clocked_hq(agents={"ana": "analyst"}, limits={"login_window": 60})
    for _ in range(5):
        assert (await attempt(http, hq, "ana", "wrong password!"))[0] == 401
    hq.clock.advance(20)
    status, body, retry_after = await attempt(http, hq, "ana", PASSWORD)
    assert (status, body["error"]["code"], retry_after) == (429, "too_many_attempts", "40")
    hq.clock.advance(39.5)
    assert (await attempt(http, hq, "ana", PASSWORD))[::2] == (429, "1")  # rounded up
    hq.clock.advance(0.5)
    status, body, _ = await attempt(http, hq, "ana", PASSWORD)
    assert status == 200, body
