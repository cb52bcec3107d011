"""The directors' service keys over HTTP: ``GET /api/keys``, ``POST /api/keys``, ``DELETE /api/keys/{name}``.

Thin handlers behind :class:`hq.http.guards.DirectorGuard` (the directors' rules: stored director
role, a change by Bearer or by the cookie with ``X-HQ-Console: 1``, the per-director change budget).
Every change goes through :class:`hq.auth.service_keys.ServiceKeys`, the path the operator CLI takes,
so it is checked, audited and made effective on every node exactly as the CLI's. The key itself is
in the answer to ``POST`` only, once, with ``Cache-Control: no-store``. Refusals are raised and
answered by :mod:`hq.http.boundary` (``key_exists`` 409, an unknown name 404).
"""

from __future__ import annotations

from aiohttp import web

from ..auth.service_keys import ServiceKeys
from ..config import Settings
from .bodies import checked_fields, read_json_body
from .guards import DirectorGuard
from .headers import NO_STORE


class KeysApi:
    """The directors' routes over :class:`ServiceKeys`."""

    def __init__(self, settings: Settings, keys: ServiceKeys, guard: DirectorGuard) -> None:
        self._body_limit = settings.limits.login_body_max_bytes
        self._keys = keys
        self._guard = guard

    def routes(self) -> list[web.RouteDef]:
        """Every route of the directors' keys API."""
        return [
            web.get("/api/keys", self.list_keys, allow_head=False),
            web.post("/api/keys", self.add_key),
            web.delete("/api/keys/{name}", self.revoke_key),
        ]

    async def list_keys(self, request: web.Request) -> web.Response:
        """``GET /api/keys``: every key not revoked, ``{"name","role","created","last_used"}``, never the key."""
        await self._guard.reader(request)
        return web.json_response([key.to_wire() for key in await self._keys.list()], headers=NO_STORE)

    async def add_key(self, request: web.Request) -> web.Response:
        """``POST /api/keys {"name","role"}``: 201 ``{"name","role","created","key"}``, the key shown this once."""
        _, actor = await self._guard.changer(request)
        body = checked_fields(await read_json_body(request, self._body_limit), {"name": str, "role": str},
                              required=("name", "role"))
        created = await self._keys.create(body["name"], body["role"], actor=actor)
        key = created.key
        answer = {"name": key.name, "role": key.role, "created": key.created, "key": created.secret}
        return web.json_response(answer, status=201, headers={**NO_STORE, "Location": f"/api/keys/{key.name}"})

    async def revoke_key(self, request: web.Request) -> web.Response:
        """``DELETE /api/keys/{name}``: 204; the key is refused at once on every node and its sockets end."""
        _, actor = await self._guard.changer(request)
        await self._keys.revoke(request.match_info["name"], actor=actor)
        return web.Response(status=204, headers=NO_STORE)
