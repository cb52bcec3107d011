"""The directors' HTTP API: agents and live sessions, read and changed over HTTP.

``GET/POST /api/agents``, ``PATCH /api/agents/{codename}``, ``POST /api/agents/{codename}/password``,
``GET /api/sessions`` and ``DELETE /api/sessions/{sid}`` (an agent's second factor has its routes in
:mod:`hq.http.second_factor`; the agents list says which agents have one). Thin handlers: every
change goes through :class:`hq.auth.agents.AgentAdmin`, the path the operator CLI takes, so a change
is checked, audited and made effective on every node exactly as the CLI's.

Who may: an agent whose *stored* role is the highest clearance level (``director`` by default).
A change (POST, PATCH, DELETE) is authorised by ``Authorization: Bearer``, or by the ``jwt`` cookie
only together with the header ``X-HQ-Console: 1``, which a cross-site form or link cannot send: a
cookie alone never changes anything (403 ``forbidden``). Changes are limited per director (a token
bucket, ``[limits] director_changes_burst`` at once, then ``director_changes_per_second``): 429 ``too_many_attempts``
with ``Retry-After``. Those rules are :class:`hq.http.guards.DirectorGuard`'s. Every refusal is
raised and answered by :mod:`hq.http.boundary` (the domain's ``UnknownAgentError``: 404, ...).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Any

from aiohttp import web

from ..auth.agents import AgentAdmin, UnknownSessionError
from ..cluster.socket_registry import ConnectionRegistry, Listing
from ..config import Settings
from ..errors import RequestError
from ..store import Agent
from .bodies import checked_fields, read_json_body
from .guards import DirectorGuard
from .headers import NO_STORE

#: Set on listings that could show this node's sockets only (Redis did not answer).
PARTIAL_HEADER = "X-HQ-Sockets"
_SESSION_ID = re.compile(r"[0-9a-f]{32}")


class DirectorsApi:
    """The directors' routes, over :class:`AgentAdmin` and the cluster's :class:`ConnectionRegistry`."""

    def __init__(self, settings: Settings, admin: AgentAdmin, guard: DirectorGuard,
                 connections: ConnectionRegistry) -> None:
        self._body_limit = settings.limits.login_body_max_bytes
        self._admin = admin
        self._guard = guard
        self._connections = connections

    def routes(self) -> list[web.RouteDef]:
        """Every route of the directors' API."""
        return [
            web.get("/api/agents", self.list_agents, allow_head=False),
            web.post("/api/agents", self.add_agent),
            web.patch("/api/agents/{codename}", self.change_agent),
            web.post("/api/agents/{codename}/password", self.reset_password),
            web.get("/api/sessions", self.list_sessions, allow_head=False),
            web.delete("/api/sessions/{sid}", self.end_session),
        ]

    # reading --------------------------------------------------------------------------------------
    async def list_agents(self, request: web.Request) -> web.Response:
        """``GET /api/agents``: every agent with its last login, second factor and live sockets on every node."""
        await self._guard.reader(request)
        agents = await self._admin.list()
        logins = await self._admin.last_logins()
        enrolled = await self._admin.with_second_factor()  # one query for all agents
        listing = await self._connections.cluster()
        sockets = Counter(record.codename.lower() for record in listing.records)
        body = [_agent(agent, logins, sockets, enrolled) for agent in agents]
        return web.json_response(body, headers=_listing_headers(listing))

    async def list_sessions(self, request: web.Request) -> web.Response:
        """``GET /api/sessions``: live login sessions with their sockets on every node."""
        await self._guard.reader(request)
        listing = await self._connections.cluster()
        sockets: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for record in sorted(listing.records, key=lambda r: (r.since, r.node)):
            sockets[record.session_id].append(record.to_wire())
        sessions = await self._admin.live_sessions(set(sockets))
        spelling = {agent.codename.lower(): agent.codename for agent in await self._admin.list()}
        body = [{"sid": s.session_id, "codename": spelling.get(s.codename, s.codename), "created": s.created,
                 "sockets": sockets.get(s.session_id, [])} for s in sessions]
        return web.json_response(body, headers=_listing_headers(listing))

    # changing -------------------------------------------------------------------------------------
    async def add_agent(self, request: web.Request) -> web.Response:
        """``POST /api/agents {"codename", "role", "password"?}``: 201 the agent (and a generated password)."""
        _, actor = await self._guard.changer(request)
        body = checked_fields(await self._body(request), {"codename": str, "role": str, "password": str},
                       required=("codename", "role"))
        created = await self._admin.add(body["codename"], body["role"], body.get("password"), actor=actor)
        answer = _agent(created.agent, {}, Counter(), set())  # a new agent has no second factor yet
        if created.generated is not None:
            answer["password"] = created.generated
        return web.json_response(answer, status=201,
                                 headers={**NO_STORE, "Location": f"/api/agents/{created.agent.codename}"})

    async def change_agent(self, request: web.Request) -> web.Response:
        """``PATCH /api/agents/{codename} {"enabled"?, "role"?}``: disabling or a new role ends its sessions."""
        principal, actor = await self._guard.changer(request)
        body = checked_fields(await self._body(request), {"enabled": bool, "role": str}, required=())
        if not body:
            raise RequestError('send "enabled" and/or "role"', "bad_request")
        agent = await self._admin.get(request.match_info["codename"])
        if agent.codename.lower() == principal.codename.lower() and (body.get("enabled") is False or "role" in body):
            # A director locking themselves out could leave HQ without one; another director or the CLI may.
            raise RequestError("directors cannot disable or demote themselves here; ask another director, "
                               "or use the CLI", "forbidden")
        if "role" in body:
            self._admin.check_role(body["role"])  # before any change: a refused request changes nothing
        enabled = body.get("enabled")
        if enabled is False:  # first, so that its sockets are told agent_disabled
            agent = await self._admin.set_enabled(agent.codename, False, actor=actor)
        if "role" in body:
            agent = await self._admin.set_role(agent.codename, body["role"], actor=actor)
        if enabled is True:
            agent = await self._admin.set_enabled(agent.codename, True, actor=actor)
        return web.json_response(await self._described(agent), headers=NO_STORE)

    async def reset_password(self, request: web.Request) -> web.Response:
        """``POST /api/agents/{codename}/password {"password"?}``: ends its sessions; generated when not given."""
        _, actor = await self._guard.changer(request)
        raw = await self._body(request) if request.can_read_body else {}
        body = checked_fields(raw, {"password": str}, required=())
        codename = request.match_info["codename"]
        result = await self._admin.set_password(codename, body.get("password"), actor=actor)
        answer = await self._described(result.agent)
        if result.generated is not None:
            answer["password"] = result.generated
        return web.json_response(answer, headers=NO_STORE)

    async def end_session(self, request: web.Request) -> web.Response:
        """``DELETE /api/sessions/{sid}``: revoke it; its sockets on every node get ``session_ended {reason: "revoked"}``."""
        _, actor = await self._guard.changer(request)
        session_id = request.match_info["sid"]
        if not _SESSION_ID.fullmatch(session_id):
            raise UnknownSessionError(session_id)
        await self._admin.end_session(session_id, actor=actor)
        return web.Response(status=204, headers=NO_STORE)

    # helpers --------------------------------------------------------------------------------------
    async def _body(self, request: web.Request) -> dict[str, Any]:
        """The request's JSON object, within the body limit."""
        return await read_json_body(request, self._body_limit)

    async def _described(self, agent: Agent) -> dict[str, Any]:
        """One agent as the list shows it (last login, second factor, live sockets on every node)."""
        logins = await self._admin.last_logins()
        enrolled = await self._admin.with_second_factor()
        listing = await self._connections.cluster()
        key = agent.codename.lower()
        sockets = Counter(r.codename.lower() for r in listing.records if r.codename.lower() == key)
        return _agent(agent, logins, sockets, enrolled)


def _agent(agent: Agent, logins: dict[str, str], sockets: Counter[str], enrolled: set[str]) -> dict[str, Any]:
    """The contract's agent shape, plus ``mfa`` (a confirmed second factor; ``enrolled`` holds lower-case
    codenames); never a hash or anything of the factor itself."""
    key = agent.codename.lower()
    return {"codename": agent.codename, "role": agent.role, "enabled": agent.enabled, "created": agent.created,
            "last_login": logins.get(key), "sockets": sockets.get(key, 0), "mfa": key in enrolled}


def _listing_headers(listing: Listing) -> dict[str, str]:
    # The body keeps the contract's shape; a listing that could show this node's sockets only says so here.
    return NO_STORE if listing.complete else {**NO_STORE, PARTIAL_HEADER: "this-node-only"}
