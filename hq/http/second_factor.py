"""The HTTP routes of the second factor: an agent enrolling itself, and directors for any agent.

Self-enrolment (``/api/auth/mfa*``) also takes the enrolment-only token that login hands an agent
whose role must use a second factor and who has none; nothing else takes that token. Directors'
routes (``/api/agents/{codename}/mfa*``) are guarded as the directors' API is
(:class:`hq.http.guards.DirectorGuard`: director clearance by stored role, one change budget per
director). Every change is authorised by ``Authorization: Bearer``, or by the ``jwt`` cookie only
together with the header ``X-HQ-Console: 1`` (a cookie alone never changes anything: a cross-site
form cannot set headers). Every change goes through :class:`~hq.auth.mfa_admin.MfaAdmin`, the
CLI's code path. Every refusal is raised and answered by :mod:`hq.http.boundary`.
"""
from __future__ import annotations

from typing import Any

from aiohttp import web

from ..addresses import AddressResolver
from ..auth.identity import Authenticator, Principal
from ..auth.mfa_admin import MfaAdmin
from ..auth.sessions import SessionService
from ..auth.tokens import ENROLL_SCOPE
from ..config import Settings
from ..errors import RequestError
from .bodies import read_json_body
from .guards import DirectorGuard, actor, identify_request, require_change_allowed
from .headers import NO_STORE
from .tokens import token_response

_ENROLL_ONLY = frozenset({ENROLL_SCOPE})


class SecondFactorRoutes:
    """``/api/auth/mfa``, ``/api/auth/mfa/enroll``, ``/api/auth/mfa/confirm`` and the directors'
    ``/api/agents/{codename}/mfa`` (POST begin, POST ``/confirm``, DELETE reset)."""

    def __init__(self, settings: Settings, admin: MfaAdmin, sessions: SessionService, authenticator: Authenticator,
                 guard: DirectorGuard, addresses: AddressResolver) -> None:
        self._admin = admin
        self._sessions = sessions
        self._auth = authenticator
        self._guard = guard
        self._addresses = addresses
        self._body_limit = settings.limits.login_body_max_bytes

    def routes(self) -> list[web.RouteDef]:
        """Every route of this API."""
        return [
            web.get("/api/auth/mfa", self.own_status),
            web.post("/api/auth/mfa/enroll", self.own_enroll),
            web.post("/api/auth/mfa/confirm", self.own_confirm),
            web.post("/api/agents/{codename}/mfa", self.agent_enroll),
            web.post("/api/agents/{codename}/mfa/confirm", self.agent_confirm),
            web.delete("/api/agents/{codename}/mfa", self.agent_reset),
        ]

    # the agent itself ------------------------------------------------------------------------------
    async def own_status(self, request: web.Request) -> web.Response:
        """``GET /api/auth/mfa``: ``{"enrolled", "pending", "required", "recovery_codes_left"}``."""
        principal = await self._own(request, change=False)
        status = await self._admin.status(principal.codename)
        return web.json_response(status.to_json(), headers=NO_STORE)

    async def own_enroll(self, request: web.Request) -> web.Response:
        """``POST /api/auth/mfa/enroll {"password"}``: a new (pending) secret, its URI and QR code, once."""
        principal = await self._own(request, change=True)
        body = await self._body(request)
        password = body.get("password")
        if not isinstance(password, str) or set(body) - {"password"}:
            raise RequestError('send {"password": "..."}: the password again, to enrol', "bad_request")
        agent = await self._admin.agent(principal.codename)
        await self._sessions.check_password(agent, password, self._addresses.client_address(request))
        enrollment = await self._admin.begin(agent.codename, actor=actor(request, principal))
        return web.json_response(enrollment.to_json(), headers=NO_STORE)

    async def own_confirm(self, request: web.Request) -> web.Response:
        """``POST /api/auth/mfa/confirm {"code"}``: ``{"recovery_codes"}``; with an enrolment-only
        token, also a full session (the login body and cookies) in place of the enrolment one."""
        principal = await self._own(request, change=True)
        code = await self._code(request)
        codes = await self._admin.confirm(principal.codename, code, actor=actor(request, principal))
        if principal.scope != ENROLL_SCOPE:
            return web.json_response({"recovery_codes": codes}, headers=NO_STORE)
        agent = await self._admin.agent(principal.codename)
        pair = await self._sessions.finish_enrollment(agent, principal.session_id, self._addresses.client_address(request))
        return token_response(pair, {"recovery_codes": codes})

    # directors -----------------------------------------------------------------------------------
    async def agent_enroll(self, request: web.Request) -> web.Response:
        """``POST /api/agents/{codename}/mfa``: begin an enrolment for an agent (a director beside it)."""
        _, by = await self._guard.changer(request)
        await self._no_body_or_empty(request)
        enrollment = await self._admin.begin(request.match_info["codename"], actor=by)
        return web.json_response(enrollment.to_json(), headers=NO_STORE)

    async def agent_confirm(self, request: web.Request) -> web.Response:
        """``POST /api/agents/{codename}/mfa/confirm {"code"}``: ``{"recovery_codes"}``."""
        _, by = await self._guard.changer(request)
        code = await self._code(request)
        codes = await self._admin.confirm(request.match_info["codename"], code, actor=by)
        return web.json_response({"recovery_codes": codes}, headers=NO_STORE)

    async def agent_reset(self, request: web.Request) -> web.Response:
        """``DELETE /api/agents/{codename}/mfa``: 204; the factor removed and the agent's sessions ended."""
        _, by = await self._guard.changer(request)
        await self._admin.reset(request.match_info["codename"], actor=by)
        return web.Response(status=204, headers=NO_STORE)

    # helpers -------------------------------------------------------------------------------------
    async def _own(self, request: web.Request, change: bool) -> Principal:
        """The agent itself, by a full token or the enrolment-only one; a change needs Bearer or the header."""
        principal = await identify_request(self._auth, request, _ENROLL_ONLY)
        if change:
            require_change_allowed(request)
        return principal

    async def _body(self, request: web.Request) -> dict[str, Any]:
        """The request's JSON object, within the body limit."""
        return await read_json_body(request, self._body_limit)

    async def _code(self, request: web.Request) -> str:
        """The one field ``code`` of the request's body."""
        body = await self._body(request)
        code = body.get("code")
        if not isinstance(code, str) or set(body) - {"code"}:
            raise RequestError('send {"code": "123456"}: the code the authenticator app shows', "bad_request")
        return code

    async def _no_body_or_empty(self, request: web.Request) -> None:
        """Refuse a body with any field (an empty body, or none, is fine)."""
        if request.can_read_body and (await self._body(request)):
            raise RequestError("this request takes no fields", "bad_request")
