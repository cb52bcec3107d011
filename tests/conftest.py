"""Shared fixtures: real HQ processes on free ports."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from .services import PrivateRedis
from .support import HQServer, make_server


@pytest.fixture
def hq_factory(tmp_path: Path) -> Iterator[Callable[..., HQServer]]:
    """Start HQ processes with config overrides: ``hq_factory(auth={"access_ttl": 5})``."""
    servers: list[HQServer] = []

    def start(agents: dict[str, str] | None = None, name: str = "hq", **overrides: dict[str, Any]) -> HQServer:
        server = make_server(tmp_path / f"{name}{len(servers)}", agents, **overrides).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def hq(hq_factory: Callable[..., HQServer]) -> HQServer:
    """One running HQ with the standard agents (ana, fox, hank, dora)."""
    return hq_factory()


@pytest.fixture(scope="module")
def shared_hq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HQServer]:
    """One HQ shared by a whole test module (for tests that do not change server state)."""
    server = make_server(tmp_path_factory.mktemp("shared")).start()
    yield server
    server.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A Redis of this test's own on a free port, killed at the end (resumed first if left stopped)."""
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    if server.process is not None:
        server.pause(False)
    server.kill()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With ``HQ_TESTS_NO_SKIPS=1`` (``.ci/run`` sets it) a skipped test fails the run: the skips are
    missing prerequisites (``initdb``/``pg_ctl``, ``runuser``, ``node_modules``, a git checkout), and
    in CI a failure test skipped for want of one must not pass as tested."""
    if os.environ.get("HQ_TESTS_NO_SKIPS") != "1" or session.exitstatus != 0:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        reporter.write_line(f"HQ_TESTS_NO_SKIPS=1: {len(skipped)} test(s) skipped, which CI does not allow", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
