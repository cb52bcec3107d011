"""``[auth] refresh_grace``: a just-rotated refresh token retried within the window gets a fresh pair.

Store-level tests run against both backends and pass ``now`` explicitly, so both edges of the
window are exact; the HTTP tests run a real HQ process; the one that needs the window
to close runs HQ in-process and moves its manual clock past it (tests/inprocess.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Callable

import aiohttp
import pytest

from hq.config import ConfigError, load_settings
from hq.store import RefreshOutcome, Store, open_store

from .inprocess import ClockedHQ, ClockedHQFactory, clocked_hq  # noqa: F401  (in-process HQ, manual clock)
from .sio import RecordingClient
from .support import PASSWORD, HQServer
from .test_store import store  # noqa: F401  (the SQLite and PostgreSQL store fixture)

GRACE = 1.0
LATER = 3600.0  # refresh-token lifetime used by the store tests




async def session_with_token(store: Store, sid: str = "s1", token: str = "t0") -> float:
    """A live session holding one unspent refresh token; returns the time to start from."""
    now = time.time()
    await store.create_session(sid, "viper")
    await store.add_refresh_token(token, sid, now + LATER)
    return now


async def rotate(store: Store, old: str, new: str, at: float, grace: float = GRACE) -> RefreshOutcome:
    return (await store.rotate_refresh_token(old, new, at + LATER, at, grace=grace)).outcome


# store: both edges ---------------------------------------------------------------------------------
async def test_retry_inside_the_window_gets_a_new_token_and_the_session_lives(store: Store) -> None:
    t = await session_with_token(store)
    assert await rotate(store, "t0", "t1", t) is RefreshOutcome.ROTATED
    retry = await store.rotate_refresh_token("t0", "t2", t + LATER, t + GRACE, grace=GRACE)
    assert (retry.outcome, retry.session_id, retry.codename, retry.issued) == (RefreshOutcome.GRACE, "s1", "viper", True)
    assert not (await store.get_session("s1")).revoked
    # The retry's token is the live one and rotates as usual.
    assert await rotate(store, "t2", "t3", t + GRACE + 0.1) is RefreshOutcome.ROTATED
    assert not (await store.get_session("s1")).revoked


async def test_retry_after_the_window_is_reuse_and_revokes_the_session(store: Store) -> None:
    t = await session_with_token(store)
    assert await rotate(store, "t0", "t1", t) is RefreshOutcome.ROTATED
    late = await store.rotate_refresh_token("t0", "t2", t + LATER, t + GRACE + 0.01, grace=GRACE)
    assert (late.outcome, late.session_id, late.codename) == (RefreshOutcome.REUSED, "s1", "viper")
    assert (await store.get_session("s1")).revoked_reason == "revoked"
    assert await rotate(store, "t1", "t3", t + GRACE + 0.02) is RefreshOutcome.UNKNOWN
    assert await rotate(store, "t2", "t4", t + GRACE + 0.02) is RefreshOutcome.UNKNOWN


async def test_grace_zero_is_reuse_at_once(store: Store) -> None:
    t = await session_with_token(store)
    assert await rotate(store, "t0", "t1", t, grace=0) is RefreshOutcome.ROTATED
    assert await rotate(store, "t0", "t2", t, grace=0) is RefreshOutcome.REUSED
    assert (await store.get_session("s1")).revoked
    assert await rotate(store, "t1", "t3", t, grace=0) is RefreshOutcome.UNKNOWN


# store: what the window does not cover ------------------------------------------------------------
async def test_the_first_child_is_spent_by_a_retry_and_revokes_the_session_when_presented(store: Store) -> None:
    t = await session_with_token(store)
    await rotate(store, "t0", "t1", t)
    assert await rotate(store, "t0", "t2", t + 0.1) is RefreshOutcome.GRACE
    # Whoever holds t1 lost the race: presenting it is reuse, at any time, window or not.
    assert await rotate(store, "t1", "t3", t + 0.2) is RefreshOutcome.REUSED
    assert (await store.get_session("s1")).revoked
    assert await rotate(store, "t2", "t4", t + 0.3) is RefreshOutcome.UNKNOWN


async def test_no_retry_once_the_new_token_has_been_used(store: Store) -> None:
    t = await session_with_token(store)
    await rotate(store, "t0", "t1", t)
    assert await rotate(store, "t1", "t2", t + 0.1) is RefreshOutcome.ROTATED
    # The reply with t1 evidently arrived, so t0 coming back is not a retry.
    assert await rotate(store, "t0", "t3", t + 0.2, grace=60) is RefreshOutcome.REUSED
    assert (await store.get_session("s1")).revoked


async def test_repeated_retries_leave_one_live_token_and_never_stretch_the_window(store: Store) -> None:
    t = await session_with_token(store)
    await rotate(store, "t0", "t1", t)
    assert await rotate(store, "t0", "t2", t + 0.4) is RefreshOutcome.GRACE
    assert await rotate(store, "t0", "t3", t + 0.8) is RefreshOutcome.GRACE
    # Counted from the first rotation, not from the last retry.
    assert await rotate(store, "t0", "t4", t + 1.2) is RefreshOutcome.REUSED
    assert (await store.get_session("s1")).revoked


async def test_the_newest_token_is_live_after_retries(store: Store) -> None:
    t = await session_with_token(store)
    await rotate(store, "t0", "t1", t)
    await rotate(store, "t0", "t2", t + 0.1)
    await rotate(store, "t0", "t3", t + 0.2)
    assert await rotate(store, "t3", "t4", t + 0.3) is RefreshOutcome.ROTATED
    assert not (await store.get_session("s1")).revoked
    assert await rotate(store, "t2", "t5", t + 0.4) is RefreshOutcome.REUSED
    assert (await store.get_session("s1")).revoked


async def test_a_retried_token_of_a_revoked_session_is_reuse(store: Store) -> None:
    t = await session_with_token(store)
    await rotate(store, "t0", "t1", t)
    await store.revoke_sessions("viper", "logged_out", "s1")
    assert await rotate(store, "t0", "t2", t + 0.1) is RefreshOutcome.REUSED
    assert await rotate(store, "t1", "t3", t + 0.1) is RefreshOutcome.UNKNOWN


async def test_an_unspent_token_still_rotates_once_among_concurrent_uses(store: Store) -> None:
    t = await session_with_token(store)
    results = await asyncio.gather(*(store.rotate_refresh_token("t0", f"n{i}", t + LATER, t, grace=GRACE)
                                     for i in range(10)))
    outcomes = [r.outcome for r in results]
    assert outcomes.count(RefreshOutcome.ROTATED) == 1
    assert outcomes.count(RefreshOutcome.GRACE) == 9, outcomes
    assert not (await store.get_session("s1")).revoked


async def test_a_race_between_the_two_branches_always_ends_in_revocation(store: Store) -> None:
    # The child in use by one holder and the parent retried by another, at the same moment:
    # whichever commits first, the other is reuse and the session is revoked.
    t = await session_with_token(store)
    await rotate(store, "t0", "t1", t)
    child, parent = await asyncio.gather(store.rotate_refresh_token("t1", "c2", t + LATER, t + 0.1, grace=GRACE),
                                         store.rotate_refresh_token("t0", "p2", t + LATER, t + 0.1, grace=GRACE))
    assert sorted(r.outcome.value for r in (child, parent)) in (["reused", "rotated"], ["grace", "reused"])
    assert (await store.get_session("s1")).revoked


async def test_tokens_rotated_before_successors_were_recorded_are_not_retried(tmp_path: Path) -> None:
    # An SQLite file written before the grace window existed: its spent tokens have no recorded
    # successor, so they keep today's reuse detection, and the new table appears on open.
    path = tmp_path / "old.sqlite3"
    store = open_store(f"sqlite:///{path}")
    await store.open()
    t = await session_with_token(store)
    await rotate(store, "t0", "t1", t)
    await store.db.execute("DROP TABLE refresh_successors")  # type: ignore[attr-defined]
    await store.close()
    store = open_store(f"sqlite:///{path}")
    await store.open()
    try:
        assert await rotate(store, "t0", "t2", t + 0.1) is RefreshOutcome.REUSED
    finally:
        await store.close()


# configuration ------------------------------------------------------------------------------------
def write_auth(path: Path, body: str) -> Path:
    path.write_text(f"[auth]\n{body}\n")
    return path


def test_refresh_grace_defaults_to_five_seconds() -> None:
    assert load_settings(None, environ={}).auth.refresh_grace == 5


@pytest.mark.parametrize("value", [0, 1, 60])
def test_refresh_grace_accepts_zero_to_sixty(value: int, tmp_path: Path) -> None:
    settings = load_settings(write_auth(tmp_path / "c.toml", f"refresh_grace = {value}"), environ={})
    assert settings.auth.refresh_grace == value


@pytest.mark.parametrize("value", ["-1", "61", "1.5", '"5"', "true"])
def test_refresh_grace_refuses_other_values(value: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(write_auth(tmp_path / "c.toml", f"refresh_grace = {value}"), environ={})
    assert refused.value.key == "auth.refresh_grace"


def test_refresh_grace_from_the_environment() -> None:
    assert load_settings(None, environ={"HQ_AUTH_REFRESH_GRACE": "0"}).auth.refresh_grace == 0
    with pytest.raises(ConfigError):
        load_settings(None, environ={"HQ_AUTH_REFRESH_GRACE": "120"})


# HTTP, against a real HQ process -----------------------------------------------------------------
async def post(session: aiohttp.ClientSession, url: str, body: object) -> tuple[int, dict[str, Any]]:
    async with session.post(url, json=body) as response:
        return response.status, await response.json()


async def refresh(session: aiohttp.ClientSession, hq: HQServer | ClockedHQ,
                  token: str) -> tuple[int, dict[str, Any]]:
    return await post(session, f"{hq.url}/api/auth/refresh", {"refresh_token": token})


async def me(session: aiohttp.ClientSession, hq: HQServer | ClockedHQ, access: str) -> tuple[int, dict[str, Any]]:
    async with session.get(f"{hq.url}/api/auth/me", headers={"Authorization": f"Bearer {access}"}) as response:
        return response.status, await response.json()


async def login(session: aiohttp.ClientSession, hq: HQServer | ClockedHQ) -> dict[str, Any]:
    status, body = await post(session, f"{hq.url}/api/auth/login", {"username": "fox", "password": PASSWORD})
    assert status == 200, body
    return body


async def test_http_retry_inside_the_window_gets_a_pair_and_the_session_lives(
        hq_factory: Callable[..., HQServer]) -> None:
    # The real-clock end-to-end test of the window (a real process, the system clock).
    hq = hq_factory(auth={"refresh_grace": 1})
    async with aiohttp.ClientSession() as session:
        first = await login(session, hq)
        live = await RecordingClient().connect(hq.url, first["access_token"])
        status, lost = await refresh(session, hq, first["refresh_token"])   # the reply that "got lost"
        assert status == 200
        status, retried = await refresh(session, hq, first["refresh_token"])
        assert status == 200, retried
        assert set(retried) == {"access_token", "token_type", "expires_in", "refresh_token", "agent"}
        assert retried["refresh_token"] not in (first["refresh_token"], lost["refresh_token"])
        assert (await me(session, hq, retried["access_token"]))[0] == 200
        # The retry's refresh token is the live one; the session and its socket go on.
        status, after = await refresh(session, hq, retried["refresh_token"])
        assert status == 200, after
        assert (await me(session, hq, after["access_token"]))[0] == 200
        await asyncio.sleep(0.3)
        assert live.sio.connected and not live.received("session_ended")
        await live.close()
    grace_lines = [line for line in hq.audit_lines() if line["event"] == "token_refreshed" and line.get("grace")]
    assert len(grace_lines) == 1
    assert grace_lines[0]["grace"] is True and grace_lines[0]["codename"] == "fox"
    assert not any(t in json.dumps(hq.audit_lines()) for t in (first["refresh_token"], lost["refresh_token"]))


async def test_http_the_first_reply_s_token_is_spent_by_the_retry(hq_factory: Callable[..., HQServer]) -> None:
    hq = hq_factory(auth={"refresh_grace": 1})
    async with aiohttp.ClientSession() as session:
        first = await login(session, hq)
        _, lost = await refresh(session, hq, first["refresh_token"])
        status, retried = await refresh(session, hq, first["refresh_token"])
        assert status == 200
        # Two holders of one token both got pairs: the one left with the superseded token gives the
        # race away when it next refreshes, and the whole session ends.
        status, body = await refresh(session, hq, lost["refresh_token"])
        assert (status, body["error"]["code"]) == (401, "token_reused")
        status, body = await me(session, hq, retried["access_token"])
        assert (status, body["error"]["code"]) == (401, "token_revoked")
        status, body = await refresh(session, hq, retried["refresh_token"])
        assert status == 401 and body["error"]["code"] in ("token_invalid", "token_reused")


async def test_http_retry_after_the_window_is_token_reused_and_revokes_the_session(
        clocked_hq: ClockedHQFactory) -> None:
    hq = await clocked_hq(auth={"refresh_grace": 1})
    async with aiohttp.ClientSession() as session:
        first = await login(session, hq)
        status, second = await refresh(session, hq, first["refresh_token"])
        assert status == 200
        live = await RecordingClient().connect(hq.url, second["access_token"])
        hq.clock.advance(1.3)  # past the window, on HQ's manual clock
        status, body = await refresh(session, hq, first["refresh_token"])
        assert (status, body["error"]["code"]) == (401, "token_reused")
        assert (await live.wait_for("session_ended"))[0] == {"reason": "revoked"}
        await live.wait_disconnected()
        status, body = await me(session, hq, second["access_token"])
        assert (status, body["error"]["code"]) == (401, "token_revoked")
        status, body = await refresh(session, hq, second["refresh_token"])
        assert status == 401 and body["error"]["code"] in ("token_invalid", "token_reused")
        await live.close()


async def test_http_grace_zero_is_token_reused_at_once(hq_factory: Callable[..., HQServer]) -> None:
    hq = hq_factory(auth={"refresh_grace": 0})
    async with aiohttp.ClientSession() as session:
        first = await login(session, hq)
        status, second = await refresh(session, hq, first["refresh_token"])
        assert status == 200
        status, body = await refresh(session, hq, first["refresh_token"])
        assert (status, body["error"]["code"]) == (401, "token_reused")
        status, body = await me(session, hq, second["access_token"])
        assert (status, body["error"]["code"]) == (401, "token_revoked")
    assert not any(line.get("grace") for line in hq.audit_lines())
