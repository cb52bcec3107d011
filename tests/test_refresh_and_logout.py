"""Refresh rotation, reuse detection, concurrency, logout: over HTTP and on live sockets."""

from __future__ import annotations

import asyncio
import time
from typing import Callable

import aiohttp

from .inprocess import ClockedHQFactory, clocked_hq  # noqa: F401  (the in-process HQ on a manual clock)
from .sio import RecordingClient
from .support import PASSWORD, HQServer


async def post(session: aiohttp.ClientSession, url: str, body: object = None, **kw: object) -> tuple[int, dict]:
    async with session.post(url, json=body, **kw) as response:
        data = await response.json() if response.status != 204 else {}
        return response.status, data


async def login(session: aiohttp.ClientSession, hq: HQServer, codename: str = "fox") -> dict:
    status, body = await post(session, f"{hq.url}/api/auth/login", {"username": codename, "password": PASSWORD})
    assert status == 200, body
    return body


async def test_refresh_rotates_and_old_token_dies(hq: HQServer) -> None:
    async with aiohttp.ClientSession() as session:
        first = await login(session, hq)
        status, second = await post(session, f"{hq.url}/api/auth/refresh", {"refresh_token": first["refresh_token"]})
        assert status == 200
        assert set(second) == {"access_token", "token_type", "expires_in", "refresh_token", "agent"}
        assert second["refresh_token"] != first["refresh_token"]
        assert second["agent"] == {"codename": "fox", "role": "field-operative"}
        async with session.get(f"{hq.url}/api/auth/me",
                               headers={"Authorization": f"Bearer {second['access_token']}"}) as me:
            assert me.status == 200


async def test_refresh_from_cookie_sets_new_cookies(hq: HQServer) -> None:
    # The cookies are Secure; a plain-HTTP test client must be told to send them anyway.
    jar = aiohttp.CookieJar(unsafe=True, treat_as_secure_origin=[hq.url])
    async with aiohttp.ClientSession(cookie_jar=jar) as session:
        await login(session, hq)
        old = {c.key: c.value for c in jar}
        async with session.post(f"{hq.url}/api/auth/refresh") as response:
            assert response.status == 200, await response.text()
            assert response.headers["Cache-Control"] == "no-store"
            cookies = response.cookies
        assert cookies["jwt"]["httponly"] and cookies["hq_refresh"]["path"] == "/api/auth"
        assert cookies["hq_refresh"].value != old["hq_refresh"]


async def test_reused_refresh_token_revokes_the_whole_session(hq_factory: Callable[..., HQServer]) -> None:
    # Without the grace window a spent token coming back is reuse at once (tests/test_refresh_grace.py
    # covers the window itself).
    hq = hq_factory(auth={"refresh_grace": 0})
    async with aiohttp.ClientSession() as session:
        stolen = await login(session, hq)
        status, owner = await post(session, f"{hq.url}/api/auth/refresh", {"refresh_token": stolen["refresh_token"]})
        assert status == 200
        live = await RecordingClient().connect(hq.url, owner["access_token"])
        status, body = await post(session, f"{hq.url}/api/auth/refresh", {"refresh_token": stolen["refresh_token"]})
        assert (status, body["error"]["code"]) == (401, "token_reused")
        assert (await live.wait_for("session_ended"))[0] == {"reason": "revoked"}
        await live.wait_disconnected()
        status, body = await post(session, f"{hq.url}/api/auth/refresh", {"refresh_token": owner["refresh_token"]})
        assert status == 401 and body["error"]["code"] in ("token_invalid", "token_reused")
        async with session.get(f"{hq.url}/api/auth/me",
                               headers={"Authorization": f"Bearer {owner['access_token']}"}) as me:
            assert me.status == 401 and (await me.json())["error"]["code"] == "token_revoked"
        await live.close()


async def test_reuse_after_the_new_token_was_used_is_caught_with_the_default_window(hq: HQServer) -> None:
    # The default config has a grace window, but it only covers a retry whose reply was lost: once
    # the owner has used the token it got, the old one coming back is reuse however soon it comes.
    async with aiohttp.ClientSession() as session:
        stolen = await login(session, hq)
        status, owner = await post(session, f"{hq.url}/api/auth/refresh", {"refresh_token": stolen["refresh_token"]})
        assert status == 200
        status, owner = await post(session, f"{hq.url}/api/auth/refresh", {"refresh_token": owner["refresh_token"]})
        assert status == 200
        status, body = await post(session, f"{hq.url}/api/auth/refresh", {"refresh_token": stolen["refresh_token"]})
        assert (status, body["error"]["code"]) == (401, "token_reused")
        async with session.get(f"{hq.url}/api/auth/me",
                               headers={"Authorization": f"Bearer {owner['access_token']}"}) as me:
            assert me.status == 401 and (await me.json())["error"]["code"] == "token_revoked"


async def test_concurrent_refreshes_with_one_token_at_most_one_wins(hq_factory: Callable[..., HQServer]) -> None:
    hq = hq_factory(auth={"refresh_grace": 0})
    async with aiohttp.ClientSession() as session:
        pair = await login(session, hq)
        results = await asyncio.gather(*(post(session, f"{hq.url}/api/auth/refresh",
                                               {"refresh_token": pair["refresh_token"]}) for _ in range(8)))
        statuses = sorted(status for status, _ in results)
        assert statuses.count(200) == 1, results
        assert all(body["error"]["code"] == "token_reused" for status, body in results if status != 200)


async def test_concurrent_refreshes_with_one_token_inside_the_grace_window(hq: HQServer) -> None:
    # With the default window the losers count as retries: all get pairs, the session lives, and
    # only the refresh token issued last stays live (see README, "Refresh grace window").
    async with aiohttp.ClientSession() as session:
        pair = await login(session, hq)
        results = await asyncio.gather(*(post(session, f"{hq.url}/api/auth/refresh",
                                               {"refresh_token": pair["refresh_token"]}) for _ in range(8)))
        assert [status for status, _ in results] == [200] * 8, results
        assert len({body["refresh_token"] for _, body in results}) == 8
        async with session.get(f"{hq.url}/api/auth/me",
                               headers={"Authorization": f"Bearer {results[0][1]['access_token']}"}) as me:
            assert me.status == 200


async def test_refresh_refusals(clocked_hq: ClockedHQFactory) -> None:
    hq = await clocked_hq(auth={"access_ttl": 1, "refresh_ttl": 2})
    async with aiohttp.ClientSession() as session:
        status, body = await post(session, f"{hq.url}/api/auth/refresh", {})
        assert (status, body["error"]["code"]) == (401, "token_missing")
        status, body = await post(session, f"{hq.url}/api/auth/refresh", {"refresh_token": "nonsense"})
        assert (status, body["error"]["code"]) == (401, "token_invalid")
        status, body = await post(session, f"{hq.url}/api/auth/refresh", {"refresh_token": 42})
        assert (status, body["error"]["code"]) == (401, "token_invalid")
        async with session.post(f"{hq.url}/api/auth/refresh", data="{", headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400
        pair = await hq.login(session, "fox")
        hq.clock.advance(3.2)  # past the refresh token's 2 s (HQ's manual clock: tests/inprocess.py)
        status, body = await post(session, f"{hq.url}/api/auth/refresh", {"refresh_token": pair["refresh_token"]})
        assert (status, body["error"]["code"]) == (401, "token_expired")


async def test_refresh_of_disabled_agent_is_refused(hq: HQServer) -> None:
    async with aiohttp.ClientSession() as session:
        pair = await login(session, hq)
        assert hq.cli("agents", "disable", "fox").returncode == 0
        status, body = await post(session, f"{hq.url}/api/auth/refresh", {"refresh_token": pair["refresh_token"]})
        assert status == 401 and body["error"]["code"] in ("token_invalid", "agent_disabled")


async def test_logout_ends_live_socket_and_token(hq: HQServer) -> None:
    async with aiohttp.ClientSession() as session:
        pair = await login(session, hq)
        other = await login(session, hq)
        live = await RecordingClient().connect(hq.url, pair["access_token"])
        bystander = await RecordingClient().connect(hq.url, other["access_token"])
        headers = {"Authorization": f"Bearer {pair['access_token']}"}
        status, _ = await post(session, f"{hq.url}/api/auth/logout", headers=headers)
        logged_out = time.monotonic()
        assert status == 204
        assert (await live.wait_for("session_ended"))[0] == {"reason": "logged_out"}
        ended = await live.wait_disconnected()
        print(f"logout -> socket end: {(ended - logged_out) * 1000:.0f} ms")
        async with session.get(f"{hq.url}/api/auth/me", headers=headers) as me:
            assert me.status == 401 and (await me.json())["error"]["code"] == "token_revoked"
        refused = RecordingClient()
        try:
            await refused.connect(hq.url, pair["access_token"])
            raise AssertionError("a revoked token connected")
        except Exception:
            assert refused.connect_error["data"] == {"code": "token_revoked"}
        assert bystander.sio.connected and not bystander.received("session_ended")
        await bystander.close()


async def test_logout_refusals(hq: HQServer) -> None:
    async with aiohttp.ClientSession() as session:
        status, body = await post(session, f"{hq.url}/api/auth/logout")
        assert (status, body["error"]["code"]) == (401, "token_missing")
        status, body = await post(session, f"{hq.url}/api/auth/logout", headers={"Authorization": "Bearer x.y.z"})
        assert (status, body["error"]["code"]) == (401, "token_invalid")


async def test_logout_with_cookie_clears_cookies(hq: HQServer) -> None:
    jar = aiohttp.CookieJar(unsafe=True, treat_as_secure_origin=[hq.url])
    async with aiohttp.ClientSession(cookie_jar=jar) as session:
        await login(session, hq)
        async with session.post(f"{hq.url}/api/auth/logout") as response:
            assert response.status == 204
            assert response.cookies["jwt"].value == "" and response.cookies["hq_refresh"].value == ""
