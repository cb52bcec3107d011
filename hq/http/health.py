"""``GET /healthz``: what a load balancer needs to know about this node, within about a second."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable

from aiohttp import web

from ..errors import describe
from .headers import NO_STORE

log = logging.getLogger(__name__)

HEALTH_CHECK_TIMEOUT = 1.0  # seconds per backend: /healthz answers within about that, whatever hangs


@dataclass(frozen=True)
class HealthCheck:
    """One backend ``/healthz`` asks about.

    ``required``: HQ cannot serve without it (503, the node should leave the balancer's pool);
    otherwise HQ serves without it, less well (200 ``degraded``).
    """

    name: str
    probe: Callable[[], Awaitable[object]]
    required: bool = True


class Health:
    """The ``/healthz`` route over the node's backends."""

    def __init__(self, checks: list[HealthCheck]) -> None:
        self._checks = checks
        self._failing: set[str] = set()  # backends the last /healthz found failing, to log changes only

    def routes(self) -> list[web.RouteDef]:
        """The one route: ``GET /healthz``."""
        return [web.get("/healthz", self.healthz)]

    async def healthz(self, request: web.Request) -> web.Response:
        """``GET /healthz``: what a load balancer needs to know, within about a second.

        200 ``{"status": "ok"}``; 200 ``{"status": "degraded", "degraded": [...]}`` while an
        optional backend (Redis) does not answer: HQ still serves, keep routing to it; 503
        ``{"status": "unavailable", "down": [...]}`` while a required one (the database) does not:
        take the node out. Backends are asked at once, each for at most ``HEALTH_CHECK_TIMEOUT``.
        (A report, not a refusal: the boundary's error body would not say which backend is down.)
        """
        problems = await asyncio.gather(*(_probe(check) for check in self._checks))
        failing = {check.name: problem for check, problem in zip(self._checks, problems) if problem}
        self._log_changes(failing)
        down = [check.name for check in self._checks if check.name in failing and check.required]
        degraded = [check.name for check in self._checks if check.name in failing and not check.required]
        if down:
            body: dict[str, object] = {"status": "unavailable", "down": down}
            if degraded:
                body["degraded"] = degraded
            return web.json_response(body, status=503, headers=NO_STORE)
        if degraded:
            return web.json_response({"status": "degraded", "degraded": degraded}, headers=NO_STORE)
        return web.json_response({"status": "ok"}, headers=NO_STORE)

    def _log_changes(self, problems: dict[str, str]) -> None:
        """One line when a backend starts or stops failing, not one per probe (balancers poll often)."""
        for name in sorted(problems.keys() - self._failing):
            log.warning("health check: %s does not answer (%s)", name, problems[name])
        for name in sorted(self._failing - problems.keys()):
            log.info("health check: %s answers again", name)
        self._failing = set(problems)


async def _probe(check: HealthCheck) -> str | None:
    """None when the backend answered in time, else what went wrong (one short line)."""
    try:
        async with asyncio.timeout(HEALTH_CHECK_TIMEOUT):
            await check.probe()
    except TimeoutError:
        return f"no answer within {HEALTH_CHECK_TIMEOUT:g} s"
    except Exception as exc:  # whatever the driver raises, down is down; the log says why
        return describe(exc)
    return None
