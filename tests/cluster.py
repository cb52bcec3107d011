"""A cluster for tests: N real ``python -m hq serve`` nodes on one PostgreSQL database and one Redis.

``start_cluster(workdir, count, redis_url)`` is the one way tests start a cluster: the machine's
Redis (``services.REDIS_URL``) for tests that never break it, a ``PrivateRedis`` for those that do;
a fresh database on the machine's PostgreSQL unless the test brings its own (a private PostgreSQL
cluster it may stop). Every node gets the same signing secret, database, Redis and key prefix; the
agents are created in the database first, then all nodes are started at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import redis.asyncio as aioredis

from .services import create_database, drop_database
from .support import AGENTS, HQServer, create_agents, make_server

#: The signing secret every node of a test cluster shares (tokens issued by one verify on all).
CLUSTER_SECRET = "a shared cluster secret of at least 32 bytes!"
#: Short presence timings for tests that wait for a dead node's entries to expire (README: [cluster]).
FAST_PRESENCE = {"presence_heartbeat": 1.0, "presence_ttl": 4.0}


@dataclass
class Cluster:
    """Started nodes sharing one database, one Redis and one key prefix (``[cluster] channel``)."""

    nodes: list[HQServer]
    database_url: str
    redis_url: str
    prefix: str

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self) -> Iterator[HQServer]:
        return iter(self.nodes)

    def __getitem__(self, index: int) -> HQServer:
        return self.nodes[index]

    @property
    def urls(self) -> list[str]:
        """The nodes' base URLs, in order."""
        return [node.url for node in self.nodes]

    async def wait_subscribed(self, timeout: float = 15) -> None:
        """Wait until every node that runs is subscribed to the revocation push channel."""
        running = sum(1 for node in self.nodes if node.running)
        client = aioredis.Redis.from_url(self.redis_url)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    if (await client.pubsub_numsub(f"{self.prefix}:revocations"))[0][1] >= running:
                        return
                except (aioredis.ConnectionError, OSError):
                    pass
                assert time.monotonic() < deadline, "the nodes did not subscribe to the revocation channel"
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    def assert_clean_logs(self) -> None:
        """No node logged a traceback (every failure was answered with a contract code instead)."""
        for node in self.nodes:
            log = node.log_path.read_text(errors="replace")
            assert "Traceback" not in log, f"{node.workdir.name}:\n{log}"

    def stop(self) -> None:
        """Stop every node that still runs."""
        for node in self.nodes:
            node.stop()


def cluster_config(database_url: str, redis_url: str, prefix: str,
                   overrides: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The sections every node shares, with ``overrides`` merged in per section."""
    config: dict[str, dict[str, Any]] = {
        "storage": {"url": database_url, "revocation_poll": 0.1},
        "cluster": {"redis_url": redis_url, "channel": prefix},
        "auth": {"bcrypt_rounds": 4, "secret": CLUSTER_SECRET},
    }
    for section, values in overrides.items():
        config.setdefault(section, {}).update(values)
    return config


@contextlib.asynccontextmanager
async def start_cluster(workdir: Path, count: int, redis_url: str, *, database_url: str | None = None,
                        agents: dict[str, str] | None = None,
                        **overrides: dict[str, Any]) -> AsyncIterator[Cluster]:
    """Start ``count`` nodes in ``workdir/a``, ``workdir/b``, ...; stopped (and the database dropped,
    if this made it) on exit.

    ``agents`` (default: support.AGENTS) are created once, before the nodes start (support.create_agents);
    ``overrides`` are config sections, as for ``make_server``.
    """
    own_database = database_url is None
    url = await create_database() if database_url is None else database_url
    prefix = f"hq-test-{uuid.uuid4().hex[:8]}"
    config = cluster_config(url, redis_url, prefix, overrides)
    nodes: list[HQServer] = []
    try:
        for index in range(count):
            nodes.append(await asyncio.to_thread(make_server, workdir / "abcdefgh"[index], {}, **config))
        await create_agents(url, AGENTS if agents is None else agents)
        cluster = Cluster(nodes, url, redis_url, prefix)
        # All at once; every start is waited for before a failure is raised, so none is left half-started.
        failures = [r for r in await asyncio.gather(*(asyncio.to_thread(node.start) for node in nodes),
                                                     return_exceptions=True) if isinstance(r, BaseException)]
        if failures:
            raise failures[0]
        yield cluster
    finally:
        for node in nodes:
            node.stop()
        if own_database:
            await drop_database(url)
