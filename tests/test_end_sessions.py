"""Ending a session's or an agent's sockets (``Realtime.end_sessions``, every revocation on every node) looks
at those sockets only: they are found by index (session id, lower-case codename), kept at connect,
disconnect and reauth, never by a scan of the node's connections."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from hq.app import build
from hq.auth.identity import Principal
from hq.auth.limits import TokenBucket
from hq.config import load_settings
from hq.realtime.realtime import Connection, Realtime

from .support import write_config


@pytest.fixture
async def realtime(tmp_path: Path) -> AsyncIterator[Realtime]:
    """One node's Socket.IO layer, built as HQ builds it (nothing is served)."""
    config = tmp_path / "config.toml"
    write_config(config, {"audit": {"path": "audit.log"}})
    hq = build(load_settings(config, environ={}))
    yield hq.realtime
    await hq.tasks.close()
    hq.audit.close()
    hq.hasher.close()


class CountingConnections(dict):  # type: ignore[type-arg]
    """The connection table, counting whole scans and single lookups."""

    scans = 0
    lookups = 0

    def __iter__(self) -> Any:
        self.scans += 1
        return super().__iter__()

    def items(self) -> Any:
        self.scans += 1
        return super().items()

    def values(self) -> Any:
        self.scans += 1
        return super().values()

    def keys(self) -> Any:
        self.scans += 1
        return super().keys()

    def get(self, key: Any, default: Any = None) -> Any:
        self.lookups += 1
        return super().get(key, default)


def connection(codename: str, session_id: str) -> Connection:
    """A live connection whose peer is never used (``end_socket`` is replaced in these tests)."""
    principal = Principal(codename, "handler", session_id, int(time.time()) + 3600)
    return Connection(None, principal, "192.0.2.1", "websocket", "test",  # type: ignore[arg-type]
                      TokenBucket(10, 10))


async def test_ending_sessions_looks_only_at_the_targets_sockets(realtime: Realtime,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    for number in range(1000):  # unrelated sockets: 50 agents, a session each
        realtime._remember(f"other-{number}", connection(f"agent{number % 50}", f"session-{number % 50}"))
    realtime._remember("fox-1", connection("fox", "fox-a"))
    realtime._remember("fox-2", connection("fox", "fox-a"))
    realtime._remember("fox-3", connection("fox", "fox-b"))
    ended: list[str] = []

    async def end_socket(socket_id: str, reason: str) -> None:
        ended.append(socket_id)
    monkeypatch.setattr(realtime, "end_socket", end_socket)
    table = CountingConnections(realtime._connections)
    realtime._connections = table

    assert await realtime.end_sessions("fox", "fox-a", "logout") == 2  # one login session
    assert sorted(ended) == ["fox-1", "fox-2"]
    assert await realtime.end_sessions("FOX", None, "agent_disabled") == 3  # every session of the agent
    assert await realtime.end_sessions("nobody", None, "agent_disabled") == 0
    assert table.scans == 0 and table.lookups == 5  # the five target sockets, none of the 1000 others


async def test_the_index_follows_disconnect_and_reauth(realtime: Realtime, monkeypatch: pytest.MonkeyPatch) -> None:
    realtime._remember("fox-1", connection("Fox", "fox-a"))
    realtime._remember("fox-2", connection("fox", "fox-a"))
    await realtime.release("fox-1", "client disconnect")
    # A reauth with a token of another of fox's login sessions moves the socket to that session.
    renewed = Principal("fox", "handler", "fox-b", int(time.time()) + 7200)

    async def identify(token: str | None, service_key_address: str | None = None) -> Principal:
        return renewed
    monkeypatch.setattr(realtime._auth, "identify", identify)
    assert (await realtime._reauth("fox-2", realtime._connections["fox-2"], {"token": "renewed"}))["ok"]
    ended: list[str] = []

    async def end_socket(socket_id: str, reason: str) -> None:
        ended.append(socket_id)
    monkeypatch.setattr(realtime, "end_socket", end_socket)
    assert await realtime.end_sessions("fox", "fox-a", "logout") == 0
    assert await realtime.end_sessions("fox", "fox-b", "logout") == 1 and ended == ["fox-2"]
    await realtime.release("fox-2", "client disconnect")
    assert len(realtime._by_session) == 0 and len(realtime._by_codename) == 0  # nothing left behind
