"""hq/cluster's shared parts, in-process: one node id and one Redis client per process, the breaker every
Redis call goes through, the heartbeat loop, and the background tasks every fire-and-forget task runs in."""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import redis.asyncio as aioredis

from hq.app import HQ, build
from hq.cluster.heartbeat import Heartbeat
from hq.cluster.redis import Outage, RedisBreaker
from hq.config import Settings, load_settings
from hq.tasks import BackgroundTasks

from .support import write_config

#: Nothing listens here: build() opens no connection, and nothing below sends a command.
UNUSED_REDIS = "redis://127.0.0.1:9/0"


@pytest.fixture
async def clustered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[HQ, list[Any]]]:
    """An HQ built with ``[cluster] redis_url``, and every Redis client made while it was built."""
    made: list[Any] = []
    from_url = aioredis.Redis.from_url

    def counting(*args: Any, **kwargs: Any) -> Any:
        client = from_url(*args, **kwargs)
        made.append(client)
        return client
    monkeypatch.setattr(aioredis.Redis, "from_url", counting)
    hq = build(_settings(tmp_path / "node"))
    monkeypatch.undo()
    yield hq, made
    assert hq.redis is not None
    await hq.redis.aclose()
    hq.audit.close()
    hq.hasher.close()


def _settings(folder: Path) -> Settings:
    """A clustered node's settings, its files (database, secrets, audit) in ``folder``."""
    folder.mkdir()
    config = folder / "config.toml"
    write_config(config, {"cluster": {"redis_url": UNUSED_REDIS}, "audit": {"path": "audit.log"}})
    return load_settings(config, environ={})


# one node id, one client -------------------------------------------------------------------------

async def test_one_node_id_per_process(clustered: tuple[HQ, list[Any]], tmp_path: Path) -> None:
    hq, _ = clustered
    host, pid, random = hq.node.split(":")
    assert host and pid.isdigit() and len(random) == 6  # host:pid:random, for people
    assert hq.presence.node == hq.node
    assert hq.realtime.connections.node == hq.node
    assert hq.watcher.node == hq.node
    assert hq.realtime.sio.manager.host_id == hq.node  # the fan-out (and the Admin UI) name the node the same


async def test_another_process_is_another_node(clustered: tuple[HQ, list[Any]], tmp_path: Path) -> None:
    """A restarted node never revives its old counts: each build (each process) has an id of its own."""
    hq, _ = clustered
    again = build(_settings(tmp_path / "restarted"))
    try:
        assert again.node != hq.node
    finally:
        assert again.redis is not None
        await again.redis.aclose()
        again.audit.close()
        again.hasher.close()


async def test_one_redis_client_per_process(clustered: tuple[HQ, list[Any]]) -> None:
    hq, made = clustered
    assert made == [hq.redis]
    assert hq.realtime.sio.manager.bus._redis is hq.redis  # the channel routing's pub/sub too
    throttle = hq.credentials._limiter  # the login limits (every door's)
    assert throttle.breaker.target is hq.redis  # type: ignore[attr-defined]
    assert hq.presence._board is not None and hq.presence._board._redis is hq.redis
    assert hq.realtime.connections._redis is hq.redis
    assert hq.watcher._bus is not None and hq.watcher._bus._redis is hq.redis


# the breaker -------------------------------------------------------------------------------------

class _FlakyRedis:
    """Answers ``get()`` or raises as told, counting the calls that reached it."""

    def __init__(self) -> None:
        self.down = False
        self.calls = 0

    async def get(self) -> str:
        self.calls += 1
        if self.down:
            raise ConnectionError("Connection refused")
        return "value"


async def test_breaker_warns_once_per_outage_and_says_once_when_redis_is_back(
        caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("tests.breaker")
    caplog.set_level(logging.INFO, logger="tests.breaker")
    now = [100.0]
    lost, back = [], []
    redis = _FlakyRedis()
    breaker = RedisBreaker(redis, Outage.of_redis(log, "feature", "doing without", "writing back"), pause=1.0,
                           clock=lambda: now[0], on_lost=lambda: lost.append(now[0]), on_back=lambda: back.append(now[0]))

    assert await breaker.ask(lambda r: r.get()) == "value"
    redis.down = True
    for _ in range(3):  # within the pause Redis is not asked at all
        assert await breaker.ask(lambda r: r.get()) is None
    assert (redis.calls, breaker.failing, breaker.resting) == (2, True, True)
    assert breaker.seconds_until_retry() == 1.0
    now[0] += 1.0
    assert await breaker.ask(lambda r: r.get()) is None  # a probe: still down, no second warning
    assert redis.calls == 3 and len(lost) == 2
    redis.down = False
    assert await breaker.ask(lambda r: r.get()) is None  # still pausing after the failed probe
    now[0] += 1.0
    assert await breaker.ask(lambda r: r.get()) == "value"
    assert await breaker.ask(lambda r: r.get()) == "value"
    assert back == [102.0] and not breaker.failing

    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "tests.breaker"]
    assert lines == [
        (logging.WARNING, "feature: Redis does not answer (ConnectionError: Connection refused); doing without "
                          "until it does"),
        (logging.INFO, "feature: Redis answers again; writing back"),
    ]
    assert not any(r.exc_info for r in caplog.records)  # never a traceback


async def test_breaker_bounds_a_call_that_does_not_answer(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tests.breaker")
    hung = asyncio.Event()
    breaker = RedisBreaker(hung, Outage.of_redis(logging.getLogger("tests.breaker"), "feature", "x", "y"),
                           deadline=0.01)
    assert await breaker.ask(lambda event: event.wait()) is None
    assert "feature: Redis does not answer (TimeoutError)" in caplog.text


async def test_breaker_without_redis_asks_nothing() -> None:
    breaker: RedisBreaker[_FlakyRedis] = RedisBreaker(None, Outage(logging.getLogger("tests.breaker"), "%s", None))
    assert breaker.resting and await breaker.ask(lambda r: r.get()) is None and not breaker.failing


# the heartbeat -----------------------------------------------------------------------------------

async def test_heartbeat_runs_at_once_then_when_woken_and_stops() -> None:
    steps: list[int] = []
    ran = asyncio.Event()

    async def step() -> float:
        steps.append(len(steps))
        ran.set()
        return 3600.0  # the next round would be an hour away: only a wake-up brings it sooner

    beat = Heartbeat("test-heartbeat", step)
    beat.start()
    await asyncio.wait_for(ran.wait(), 5)
    ran.clear()
    beat.wake()
    await asyncio.wait_for(ran.wait(), 5)
    assert steps == [0, 1] and beat.running
    await asyncio.wait_for(beat.stop(), 5)
    assert not beat.running


async def test_heartbeat_stop_ends_the_loop_even_when_a_step_swallows_the_cancellation() -> None:
    """As redis-py may, finishing a command the task was cancelled in (and asyncio.wait_for on 3.11)."""
    entered = asyncio.Event()

    async def step() -> float:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            pass  # lost on the way
        return 0.0  # and the next round would be at once

    beat = Heartbeat("test-heartbeat", step)
    beat.start()
    await entered.wait()
    await asyncio.wait_for(beat.stop(), 5)


# background tasks --------------------------------------------------------------------------------

async def test_a_task_never_awaited_is_cancelled_at_shutdown() -> None:
    tasks = BackgroundTasks()
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    task = tasks.spawn(forever(), name="forever")
    del task  # nobody keeps it but the set
    gc.collect()
    await started.wait()
    assert len(tasks) == 1
    await asyncio.wait_for(tasks.close(), 5)
    assert cancelled.is_set() and len(tasks) == 0
    late = tasks.spawn(forever(), name="late")  # spawned while stopping: it does not outlive the stop
    await asyncio.gather(late, return_exceptions=True)
    assert late.cancelled()


async def test_a_failed_task_is_logged_once_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    tasks = BackgroundTasks()

    async def boom() -> None:
        raise ValueError("boom\nsecond line")

    task = tasks.spawn(boom(), name="boom-task")
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0)  # done callbacks run
    del task
    gc.collect()  # asyncio would report an exception nobody retrieved here
    await asyncio.sleep(0)
    records = [r for r in caplog.records if "boom" in r.getMessage()]
    assert [(r.name, r.levelno, r.getMessage()) for r in records] == [
        ("hq.tasks", logging.ERROR, "boom-task failed: ValueError: boom")]
    assert records[0].exc_info is None
    assert len(tasks) == 0
    await tasks.close()
