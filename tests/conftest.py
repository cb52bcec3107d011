"""Shared fixtures: HQ nodes (in this process unless a test is marked ``real_process``), private services."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from .services import PrivateRedis
from .support import HQProcess, HQServer, make_server, seed_agents
from .threaded_hq import make_in_process_server


def server_maker(node: pytest.Item | pytest.Collector) -> Callable[..., HQServer]:
    """How a test's servers are made: in this process by default; as real ``python -m hq serve``
    processes for tests marked ``real_process`` (signals, crashes, what ``serve`` itself sets up)."""
    return make_server if node.get_closest_marker("real_process") else make_in_process_server


@pytest.fixture
def hq_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., HQServer]]:
    """Start HQ nodes with config overrides: ``hq_factory(auth={"access_ttl": 5})``."""
    servers: list[HQServer] = []
    make = server_maker(request.node)

    def start(agents: dict[str, str] | None = None, name: str = "hq", **overrides: dict[str, Any]) -> HQServer:
        server = make(tmp_path / f"{name}{len(servers)}", agents, **overrides).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def hq(hq_factory: Callable[..., HQServer]) -> HQServer:
    """One running HQ with the standard agents (ana, fox, hank, dora)."""
    return hq_factory()


@pytest.fixture
def hq_process(tmp_path: Path) -> Iterator[HQProcess]:
    """One real ``python -m hq serve`` process with the standard agents, for tests about the process."""
    server = make_server(tmp_path / "hq-process").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shared_hq(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HQServer]:
    """One HQ shared by a whole test module (for tests that do not change server state)."""
    server = server_maker(request.node)(tmp_path_factory.mktemp("shared")).start()
    yield server
    server.stop()


@pytest.fixture
def fresh_agent(shared_hq: HQServer) -> str:
    """A codename of this test's own (a field-operative) in ``shared_hq``'s store, for tests that
    change an agent's state (sessions, password, second factor) on a server shared by the module."""
    codename = f"agent-{uuid.uuid4().hex[:10]}"
    seed_agents(shared_hq.config, {codename: "field-operative"})
    return codename


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A Redis of this test's own on a free port, killed at the end (resumed first if left stopped)."""
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    if server.process is not None:
        server.pause(False)
    server.kill()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/browser is a ``browser`` test (``make test-fast`` leaves them out)."""
    browser = Path(__file__).parent / "browser"
    for item in items:
        if browser in item.path.parents:
            item.add_marker(pytest.mark.browser)


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
