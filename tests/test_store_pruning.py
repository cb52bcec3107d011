"""The store's internal tables stay bounded (hq/store/pruning.py), on SQLite and PostgreSQL alike.

HQ's parts run in this process on a ManualClock that moves on instead of the test sleeping; the
pruner runs on the same clock. The 10,000 login/refresh/logout cycles go to the store directly (what
SessionService would write, without bcrypt and signing); what pruning must keep is checked through
SessionService itself (bcrypt cost 4).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import AsyncIterator

import asyncpg
import pytest

from hq.app import HQ, build
from hq.auth.tokens import hash_refresh_token
from hq.clock import ManualClock
from hq.config import load_settings
from hq.store import RefreshOutcome
from hq.store.postgres import PRUNE_LOCK, PostgresStore
from hq.store.pruning import Retention

from .services import create_database, drop_database
from .support import PASSWORD, base_config, free_port, write_config

ACCESS_TTL, REFRESH_TTL = 60, 600
AGENTS = ["ana", "fox", "hank", "dora"] + [f"agent{n}" for n in range(6)]
#: Seconds the clock moves on after each round of one cycle per agent.
STEP = 30
ROUNDS = 1000  # x 10 agents = 10,000 login/refresh/logout cycles
PRUNE_EVERY_ROUNDS = 10
TABLES = ("sessions", "refresh_tokens", "refresh_successors", "revocations", "prune_runs")


@pytest.fixture(params=["sqlite", "postgresql"])
async def clocked(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[HQ, ManualClock]]:
    """HQ's parts (not served) on a manual clock, its store open, with :data:`AGENTS`."""
    # The SQLite file in memory-backed /dev/shm where there is one: 40,000 commits, each an fsync on
    # disk, would cost minutes and prove nothing more about what is kept.
    folder = Path(tempfile.mkdtemp(dir="/dev/shm" if Path("/dev/shm").is_dir() else tmp_path))
    url = f"sqlite:///{folder / 'hq.sqlite3'}" if request.param == "sqlite" else await create_database()
    config = tmp_path / "config.toml"
    write_config(config, base_config(free_port(), auth={"access_ttl": ACCESS_TTL, "refresh_ttl": REFRESH_TTL,
                                                        "bcrypt_rounds": 4, "mfa_required": []},
                                     storage={"url": url}))
    clock = ManualClock(time.time())
    hq = build(load_settings(config, environ={}), clock)
    await hq.store.open()
    for codename in AGENTS:
        await hq.store.add_agent(codename, "handler", await hq.hasher.hash(PASSWORD))
    yield hq, clock
    await hq.store.close()
    hq.hasher.close()
    hq.audit.close()
    shutil.rmtree(folder, ignore_errors=True)
    if request.param == "postgresql":
        await drop_database(url)


async def _row_counts(hq: HQ) -> dict[str, int]:
    counts = {}
    for table in TABLES:
        if isinstance(hq.store, PostgresStore):
            counts[table] = await hq.store.pool.fetchval(f"SELECT count(*) FROM {table}")
        else:
            async with hq.store.db.execute(f"SELECT count(*) FROM {table}") as cursor:
                counts[table] = (await cursor.fetchone())[0]
    return counts


async def _cycle(hq: HQ, now: float, codename: str, cycle: int) -> None:
    """One login, refresh and logout as the store sees them (every seventh cycle the spent refresh
    token comes back instead of the logout: reuse, and the session is revoked)."""
    store = hq.store
    session_id = f"{codename}-{cycle}"
    await store.create_session(session_id, codename)
    await store.add_refresh_token(f"{session_id}-1", session_id, now + REFRESH_TTL)
    rotated = await store.rotate_refresh_token(f"{session_id}-1", f"{session_id}-2", now + REFRESH_TTL, now, 5)
    assert rotated.outcome is RefreshOutcome.ROTATED
    if cycle % 7 == 0:
        reused = await store.rotate_refresh_token(f"{session_id}-1", "x", now + REFRESH_TTL, now + 10, 5)
        assert reused.outcome is RefreshOutcome.REUSED
    else:
        assert await store.revoke_sessions(codename, "logged_out", session_id) == [session_id]


@pytest.mark.soak
async def test_ten_thousand_cycles_leave_every_internal_table_bounded(clocked: tuple[HQ, ManualClock]) -> None:
    hq, clock = clocked
    most = dict.fromkeys(TABLES, 0)
    for round_number in range(1, ROUNDS + 1):
        await asyncio.gather(*(_cycle(hq, clock.time(), codename, round_number) for codename in AGENTS))
        clock.advance(STEP)
        if round_number % PRUNE_EVERY_ROUNDS == 0:
            assert await hq.pruner.run_once() is not None
            for table, count in (await _row_counts(hq)).items():
                most[table] = max(most[table], count)
    # Per agent: the sessions a token issued in the last access_ttl + leeway + skew (100 s, ~4
    # rounds) may still use, plus its newest, with their two tokens each; the feed's entries of the
    # last two pruning periods (20 rounds). And the runs within the feed's retention.
    agents = len(AGENTS)
    bounds = {"sessions": agents * 6, "refresh_tokens": agents * 2 * 6, "refresh_successors": agents * 6,
              "revocations": agents * 25, "prune_runs": 4}
    assert all(most[table] <= bound for table, bound in bounds.items()), most
    # What is still needed was kept: every agent's last login, and the feed's newest entry.
    assert set((await hq.store.last_logins()).keys()) == set(AGENTS)
    assert await hq.store.last_revocation_id() == len(AGENTS) * ROUNDS


async def test_pruning_keeps_what_rotation_revocation_and_the_directors_api_still_need(
        clocked: tuple[HQ, ManualClock]) -> None:
    hq, clock = clocked
    store = hq.store
    earlier = hq.tokens.verify((await hq.sessions.login("fox", PASSWORD, "127.0.0.1")).access.token).sid
    pair = await hq.sessions.login("fox", PASSWORD, "127.0.0.1")
    session_id = hq.tokens.verify(pair.access.token).sid
    await hq.sessions.refresh(pair.refresh_token, "127.0.0.1")
    await hq.sessions.revoke("hank", "agent_disabled")
    cursor = await store.last_revocation_id()
    await hq.sessions.revoke("ana", "logged_out", "some-session")
    clock.advance(ACCESS_TTL)  # younger than the feed's retention: kept
    assert await hq.pruner.run_once() is not None
    assert [r.codename for r in await store.revocations_after(cursor)] == ["ana"]
    # The session lives: its spent refresh token is still recognised as reused for refresh_ttl.
    for _ in range(3):
        clock.advance(170)  # a pruning round (150 s) apart; 570 s in all, within refresh_ttl
        assert await hq.pruner.run_once() is not None
    assert session_id in [s.session_id for s in await store.live_sessions(clock.time())]
    reused = await store.rotate_refresh_token(hash_refresh_token(pair.refresh_token), "new", clock.time() + 60, clock.time())
    assert reused.outcome is RefreshOutcome.REUSED
    assert (await store.get_session(session_id)).revoked
    # Long after: the feed keeps only its newest entry; fox's newest session stays for last_logins.
    clock.advance(REFRESH_TTL * 10)
    assert await hq.pruner.run_once() is not None
    assert [r.reason for r in await store.revocations_after(0)] == ["revoked"]
    assert "fox" in await store.last_logins()
    # Of fox's two sessions (opened within the same second, maybe) the newest alone is left.
    assert [await store.get_session(sid) is None for sid in (earlier, session_id)].count(True) == 1
    assert await _row_counts(hq) == {"sessions": 1, "refresh_tokens": 0, "refresh_successors": 0,
                                     "revocations": 1, "prune_runs": 2}


async def test_one_node_of_two_prunes_a_round() -> None:
    url = await create_database()
    first, second = PostgresStore(url), PostgresStore(url)
    await first.open()
    await second.open()
    retention = Retention(access_ttl=ACCESS_TTL, refresh_ttl=REFRESH_TTL, refresh_grace=5, leeway=10,
                          round_length=100)
    holder = await asyncpg.connect(url)
    try:
        now = 1_000_000.0
        # Both wake at once: one prunes, the other skips the round.
        reports = await asyncio.gather(first.prune(retention, now), second.prune(retention, now))
        assert sum(report is not None for report in reports) == 1, reports
        # Later in the same round, the other node still skips; in the next round, one prunes again.
        assert await second.prune(retention, now + 50) is None
        assert await first.prune(retention, now + 50) is None
        assert await second.prune(retention, now + 101) is not None
        # While another node holds the pruning lock, a node does not wait for it: it skips.
        await holder.execute("BEGIN")
        await holder.execute("SELECT pg_advisory_xact_lock($1)", PRUNE_LOCK)
        assert await first.prune(retention, now + 500) is None
        await holder.execute("ROLLBACK")
        assert await first.prune(retention, now + 500) is not None
        assert await holder.fetchval("SELECT count(*) FROM prune_runs") == 3
    finally:
        await holder.close()
        await first.close()
        await second.close()
        await drop_database(url)
