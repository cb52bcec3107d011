"""The store contract, run against both backends: a real SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import AsyncIterator

import pytest

from hq.store import AgentExistsError, RefreshOutcome, Store, UnknownAgentError, open_store

from .services import create_database, drop_database


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    else:
        url = await create_database()
    store = open_store(url)
    await store.open()
    yield store
    await store.close()
    if request.param == "postgresql":
        await drop_database(url)


async def test_agents_are_unique_regardless_of_case(store: Store) -> None:
    agent = await store.add_agent("Viper", "handler", "hash")
    assert (agent.codename, agent.role, agent.enabled) == ("Viper", "handler", True)
    with pytest.raises(AgentExistsError):
        await store.add_agent("VIPER", "analyst", "hash")
    assert (await store.get_agent("viper")).codename == "Viper"
    assert await store.get_agent("nobody") is None
    assert await store.count_agents() == 1
    assert [a.codename for a in await store.list_agents()] == ["Viper"]


async def test_agent_updates(store: Store) -> None:
    await store.add_agent("viper", "handler", "old")
    assert (await store.set_password("VIPER", "new")).password_hash == "new"
    assert (await store.set_enabled("viper", False)).enabled is False
    with pytest.raises(UnknownAgentError):
        await store.set_enabled("ghost", True)


async def test_revocation_feed(store: Store) -> None:
    await store.create_session("s1", "Viper")
    await store.create_session("s2", "viper")
    start = await store.last_revocation_id()
    assert await store.revoke_sessions("viper", "logged_out", "s1") == ["s1"]
    assert sorted(await store.revoke_sessions("viper", "agent_disabled")) == ["s2"]
    feed = await store.revocations_after(start)
    assert [(r.codename, r.session_id, r.reason) for r in feed] == [("viper", "s1", "logged_out"),
                                                            ("viper", None, "agent_disabled")]
    assert (await store.get_session("s1")).revoked_reason == "logged_out"
    assert await store.get_session("nope") is None


async def test_refresh_rotation_reuse_and_expiry(store: Store) -> None:
    await store.create_session("s1", "viper")
    now = time.time()
    await store.add_refresh_token("h1", "s1", now + 60)
    assert (await store.rotate_refresh_token("h1", "h2", now + 60, now)).outcome is RefreshOutcome.ROTATED
    reused = await store.rotate_refresh_token("h1", "h3", now + 60, now)
    assert (reused.outcome, reused.session_id) == (RefreshOutcome.REUSED, "s1")
    assert (await store.get_session("s1")).revoked
    assert (await store.rotate_refresh_token("h2", "h4", now + 60, now)).outcome is RefreshOutcome.UNKNOWN
    assert (await store.rotate_refresh_token("zz", "h5", now + 60, now)).outcome is RefreshOutcome.UNKNOWN
    await store.create_session("s2", "viper")
    await store.add_refresh_token("e1", "s2", now - 1)
    assert (await store.rotate_refresh_token("e1", "e2", now + 60, now)).outcome is RefreshOutcome.EXPIRED


async def test_concurrent_rotation_has_one_winner(store: Store) -> None:
    await store.create_session("s1", "viper")
    now = time.time()
    await store.add_refresh_token("h1", "s1", now + 60)
    results = await asyncio.gather(*(store.rotate_refresh_token("h1", f"n{i}", now + 60, now) for i in range(10)))
    assert [r.outcome for r in results].count(RefreshOutcome.ROTATED) == 1


async def test_message_ids_grow_by_one_per_channel_and_history_pages(store: Store) -> None:
    ids = await asyncio.gather(*(store.add_message("missions", "hank", f"m{i}", "2026-01-01T00:00:00Z")
                                 for i in range(20)))
    assert sorted(m.id for m in ids) == list(range(1, 21))
    assert (await store.add_message("hq", "fox", "other", "2026-01-01T00:00:00Z")).id == 1
    assert await store.last_message_id("missions") == 20
    assert await store.last_message_id("empty") == 0
    latest = await store.history("missions", None, 5)
    assert [m.id for m in latest] == [16, 17, 18, 19, 20]
    page = await store.history("missions", 3, 4)
    assert [m.id for m in page] == [4, 5, 6, 7]
    assert page[0].to_wire().keys() == {"id", "channel", "from", "text", "ts"}
    assert await store.history("missions", 20, 10) == []


async def test_a_large_burst_is_committed_in_chunks_with_unique_ids(store: Store) -> None:
    messages = await asyncio.gather(*(store.add_message("missions", "hank", f"m{i}", "2026-01-01T00:00:00Z")
                                      for i in range(2500)))
    assert sorted(m.id for m in messages) == list(range(1, 2501))
    by_id = {m.id: m.text for m in messages}
    assert [(m.id, m.text) for m in await store.history("missions", 2497, 10)] == [(i, by_id[i]) for i in (2498, 2499, 2500)]


async def test_agent_and_session_in_one_query(store: Store) -> None:
    await store.add_agent("Viper", "handler", "hash")
    await store.create_session("s1", "Viper")
    agent, session = await store.get_agent_and_session("VIPER", "s1")
    assert agent.codename == "Viper" and session.session_id == "s1" and session.codename == "viper" and not session.revoked
    agent, session = await store.get_agent_and_session("viper", "missing")
    assert agent.codename == "Viper" and session is None
    assert await store.get_agent_and_session("ghost", "s1") == (None, None)
