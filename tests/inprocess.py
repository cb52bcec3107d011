"""HQ in the test's own process on a :class:`~hq.clock.ManualClock`, for the tests of things that
expire: token lifetimes, the refresh grace window, login-throttle windows, socket expiry warnings.

Such a test used to run a real ``python -m hq`` process with second-long lifetimes and sleep
through them. Here ``create_app(settings, clock=clock)`` is served by pytest-aiohttp's
``aiohttp_server`` (a free port of its own, data in the test's ``tmp_path``, so it is xdist-safe)
and the test moves ``hq.clock`` on instead of sleeping: a token expires, a window closes, a timer
fires the moment the test says so, and never because the machine was slow. Clients are the real
ones (aiohttp over HTTP, python-socketio sockets), so everything but the clock is as in production.
One real-process, real-clock test of each feature stays in its own module.

Use it in a test module with ``from .inprocess import clocked_hq  # noqa: F401`` and
``hq = await clocked_hq(auth={"access_ttl": 30})``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from hq.app import create_app
from hq.clock import ManualClock
from hq.config import load_settings

from .support import AGENTS, PASSWORD, base_config, create_agents, free_port, write_config

#: ``aiohttp_server``'s signature, as far as this module uses it.
ServerFactory = Callable[..., Awaitable[TestServer]]


@dataclass
class ClockedHQ:
    """One in-process HQ, its manual clock and its folder."""

    app: web.Application
    server: TestServer
    clock: ManualClock
    workdir: Path

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    def audit_lines(self) -> list[dict[str, Any]]:
        """The audit log, parsed."""
        path = self.workdir / "audit.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    async def post(self, http: aiohttp.ClientSession, path: str, body: object = None,
                   headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        """POST JSON to ``path``; returns the status and the JSON body (``{}`` for none)."""
        async with http.post(f"{self.url}{path}", json=body, headers=headers) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else {}

    async def login(self, http: aiohttp.ClientSession, codename: str, password: str = PASSWORD) -> dict[str, Any]:
        """Log in; returns the JSON body (fails the test on anything but 200)."""
        status, body = await self.post(http, "/api/auth/login", {"username": codename, "password": password})
        assert status == 200, body
        return body

    async def me(self, http: aiohttp.ClientSession, access_token: str) -> tuple[int, dict[str, Any]]:
        """``GET /api/auth/me`` with a Bearer token."""
        async with http.get(f"{self.url}/api/auth/me", headers={"Authorization": f"Bearer {access_token}"}) as r:
            return r.status, await r.json()


ClockedHQFactory = Callable[..., Awaitable[ClockedHQ]]


@pytest.fixture
async def clocked_hq(aiohttp_server: ServerFactory, tmp_path: Path) -> ClockedHQFactory:
    """Start in-process HQs on manual clocks: ``await clocked_hq(auth={"access_ttl": 30})``.

    Each has the standard agents (or ``agents``), config overrides as ``hq_factory`` takes them, and
    a clock starting at the current whole second (so ``iat`` equals it and ``exp`` is exact).
    """
    started = 0

    async def start(agents: dict[str, str] | None = None, **overrides: dict[str, Any]) -> ClockedHQ:
        nonlocal started
        workdir = tmp_path / f"clocked{started}"
        started += 1
        workdir.mkdir()
        # The configured port is only named in the allowed origins; the server below binds it.
        port = free_port()
        config = workdir / "config.toml"
        write_config(config, base_config(port, **overrides))
        settings = load_settings(config, environ={})
        await create_agents(settings.storage_url, AGENTS if agents is None else agents, settings.auth.bcrypt_rounds)
        clock = ManualClock(start=float(int(time.time())))
        app = create_app(settings, on_first_agent=lambda *_: None, clock=clock)
        server = await aiohttp_server(app, host="127.0.0.1", port=port)
        return ClockedHQ(app, server, clock, workdir)

    return start
