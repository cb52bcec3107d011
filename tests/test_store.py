"""The store contract, run against both backends: a real SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import AsyncIterator

import pytest

from hq.store import (AgentExistsError, RefreshOutcome, ServiceKeyExistsError, Store, UnknownAgentError,
                      open_store)
from hq.store.postgres import PostgresStore
from hq.store.sqlite import SQLiteStore

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


# group commit -------------------------------------------------------------------------------------
async def _transactions_that_stored_messages(store: Store) -> int:
    """How many transactions wrote the ``messages`` rows (PostgreSQL: distinct ``xmin``)."""
    assert isinstance(store, PostgresStore)
    async with store.pool.acquire() as conn:
        return int(await conn.fetchval("SELECT count(DISTINCT xmin::text) FROM messages"))


def _count_sqlite_message_inserts(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every INSERT INTO messages the SQLite store sends from now on (one per batch)."""
    assert isinstance(store, SQLiteStore)
    inserts: list[str] = []
    execute = store.db.execute

    def counting(sql: str, *args: object) -> object:
        if sql.startswith("INSERT INTO messages"):
            inserts.append(sql)
        return execute(sql, *args)

    monkeypatch.setattr(store.db, "execute", counting)
    return inserts


async def _batches_taken(store: Store, sqlite_inserts: list[str]) -> int:
    if isinstance(store, PostgresStore):
        return await _transactions_that_stored_messages(store)
    return len(sqlite_inserts)


async def test_a_burst_on_one_channel_is_stored_in_a_few_batches_with_ids_in_order(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    inserts = _count_sqlite_message_inserts(store, monkeypatch) if isinstance(store, SQLiteStore) else []
    messages = await asyncio.gather(*(store.add_message("missions", "hank", f"m{i}", "2026-01-01T00:00:00Z")
                                      for i in range(200)))
    # Submitted in order, numbered in order: no gap, no duplicate, none overtaking an earlier one.
    assert [m.id for m in messages] == list(range(1, 201))
    assert [m.text for m in await store.history("missions", 0, 500)] == [f"m{i}" for i in range(200)]
    assert 1 <= await _batches_taken(store, inserts) <= 3


async def test_a_burst_on_eight_channels_numbers_each_channel_from_one(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    inserts = _count_sqlite_message_inserts(store, monkeypatch) if isinstance(store, SQLiteStore) else []
    await store.add_message("c0", "hank", "first", "2026-01-01T00:00:00Z")  # one channel already has a counter
    channels = [f"c{i % 8}" for i in range(400)]
    messages = await asyncio.gather(*(store.add_message(channel, "hank", f"m{i}", "2026-01-01T00:00:00Z")
                                      for i, channel in enumerate(channels)))
    for n in range(8):
        ids = [m.id for m in messages if m.channel == f"c{n}"]
        first = 2 if n == 0 else 1
        assert ids == list(range(first, first + 50)), n
        assert await store.last_message_id(f"c{n}") == first + 49
    # 401 messages: one alone, then at most 256 (PostgreSQL) or 1000 (SQLite) a batch.
    assert 2 <= await _batches_taken(store, inserts) <= 4


async def test_two_nodes_writing_one_channel_get_unique_gapless_ids_in_commit_order() -> None:
    url = await create_database()
    first, second = PostgresStore(url), PostgresStore(url)
    await first.open()
    await second.open()
    try:
        texts = {node: [f"{node.__class__.__name__}-{id(node)}-{i}" for i in range(300)] for node in (first, second)}
        # Interleaved: both nodes' batches contend for the channel's counter row at once.
        calls = [node.add_message("hq", "hank", texts[node][i], "2026-01-01T00:00:00Z")
                 for i in range(300) for node in (first, second)]
        stored = await asyncio.gather(*calls)
        assert sorted(m.id for m in stored) == list(range(1, 601))
        by_text = {m.text: m.id for m in stored}
        for node in (first, second):
            ids = [by_text[text] for text in texts[node]]
            assert ids == sorted(ids), "a node's messages must commit in the order they were sent"
        history = await first.history("hq", 0, 500) + await first.history("hq", 500, 500)
        assert [m.id for m in history] == list(range(1, 601))
        assert [by_text[m.text] for m in history] == [m.id for m in history]
        # Batches, not messages, contend: a handful of transactions for 600 messages.
        assert await _transactions_that_stored_messages(first) <= 8
    finally:
        await first.close()
        await second.close()
        await drop_database(url)


async def test_service_keys_are_stored_by_hash_unique_by_name_regardless_of_case(store: Store) -> None:
    key = await store.add_service_key("k1", "Deploy-Bot", "handler", "hash1")
    assert (key.name, key.role, key.last_used, key.revoked) == ("Deploy-Bot", "handler", None, None)
    with pytest.raises(ServiceKeyExistsError):
        await store.add_service_key("k2", "DEPLOY-bot", "analyst", "hash2")
    assert [k.name for k in await store.list_service_keys()] == ["Deploy-Bot"]
    assert (await store.service_key_by_hash("hash1")).key_id == "k1"
    assert await store.service_key_by_hash("hash2") is None


async def test_revoking_a_service_key_keeps_it_findable_frees_its_name_and_feeds_the_revocation(store: Store) -> None:
    await store.add_service_key("k1", "Deploy-Bot", "handler", "hash1")
    start = await store.last_revocation_id()
    revoked = await store.revoke_service_key("deploy-BOT")
    assert revoked is not None and revoked.key_id == "k1" and revoked.revoked is not None
    assert await store.revoke_service_key("deploy-bot") is None  # already revoked: nothing changes
    assert await store.list_service_keys() == []
    assert (await store.service_key_by_hash("hash1")).revoked is not None  # told "revoked", not "unknown"
    feed = await store.revocations_after(start)
    assert [(r.codename, r.session_id, r.reason) for r in feed] == [("key:deploy-bot", "k1", "revoked")]
    await store.add_service_key("k2", "deploy-bot", "analyst", "hash2")  # the name is free again
    assert [k.key_id for k in await store.list_service_keys()] == ["k2"]


async def test_service_key_last_used_never_moves_backwards(store: Store) -> None:
    await store.add_service_key("k1", "bot", "handler", "hash1")
    await store.touch_service_keys({"k1": "2030-01-01T00:00:02Z", "unknown": "2030-01-01T00:00:09Z"})
    await store.touch_service_keys({"k1": "2030-01-01T00:00:01Z"})
    assert (await store.service_key_by_hash("hash1")).last_used == "2030-01-01T00:00:02Z"
