"""The HTTP routes of the second factor: an agent enrolling itself, and directors for any agent.

Self-enrolment (``/api/auth/mfa*``) also takes the enrolment-only token that login hands an agent
whose role must use a second factor and who has none; nothing else takes that token. Directors'
routes (``/api/agents/{codename}/mfa*``) are guarded as the directors' API is
(:class:`hq.guards.DirectorGuard`: director clearance by stored role, one change budget per
director). Every change is authorised by ``Authorization: Bearer``, or by the ``jwt`` cookie only
together with the header ``X-HQ-Console: 1`` (a cookie alone never changes anything: a cross-site
form cannot set headers). Every change goes through :class:`~hq.auth.mfa_admin.MfaAdmin`, the
CLI's code path.
"""
from __future__ import annotations

import functools
from typing import Any, Awaitable, Callable

from aiohttp import web

from .addresses import AddressResolver
from .auth.identity import Authenticator, Principal
from .auth.mfa import OtpRejected
from .auth.mfa_admin import MfaAdmin, MfaAdminError
from .auth.sessions import SessionService
from .auth.tokens import ENROLL_SCOPE
from .config import Settings
from .errors import AuthError, LoginError
from .guards import DirectorGuard, Refused, actor, require_change_allowed
from .http_api import NO_STORE, auth_error_response, error_response, identify_request, read_json_body, token_response
from .store import UnknownAgentError

_ENROLL_ONLY = frozenset({ENROLL_SCOPE})


class MfaApi:
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
            web.get("/api/auth/mfa", _refusals_answered(self.own_status)),
            web.post("/api/auth/mfa/enroll", _refusals_answered(self.own_enroll)),
            web.post("/api/auth/mfa/confirm", _refusals_answered(self.own_confirm)),
            web.post("/api/agents/{codename}/mfa", _refusals_answered(self.agent_enroll)),
            web.post("/api/agents/{codename}/mfa/confirm", _refusals_answered(self.agent_confirm)),
            web.delete("/api/agents/{codename}/mfa", _refusals_answered(self.agent_reset)),
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
            raise _BadRequest('send {"password": "..."}: the password again, to enrol')
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
        body, problem = await read_json_body(request, self._body_limit)
        if problem is not None:
            raise _Answered(problem)
        return body

    async def _code(self, request: web.Request) -> str:
        body = await self._body(request)
        code = body.get("code")
        if not isinstance(code, str) or set(body) - {"code"}:
            raise _BadRequest('send {"code": "123456"}: the code the authenticator app shows')
        return code

    async def _no_body_or_empty(self, request: web.Request) -> None:
        if request.can_read_body and (await self._body(request)):
            raise _BadRequest("this request takes no fields")


class _Answered(Exception):
    """A request already answered (a body that could not be read)."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


class _BadRequest(Exception):
    """400 ``bad_request``."""


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _refusals_answered(handler: Handler) -> Handler:
    """``handler`` with the contract's JSON answer for each refusal (a backend down is left to
    hq.http_api's ``json_errors``: 503 ``unavailable``)."""
    @functools.wraps(handler)
    async def answered(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except _Answered as exc:
            return exc.response
        except _BadRequest as exc:
            return error_response(400, "bad_request", str(exc))
        except Refused as exc:
            return error_response(exc.status, exc.code, exc.message, {**NO_STORE, **(exc.headers or {})})
        except AuthError as exc:
            return auth_error_response(exc)
        except LoginError as exc:  # the password asked again: wrong, or the login limits
            status = 429 if exc.code == "too_many_attempts" else 401
            headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
            return error_response(status, exc.code, exc.message, headers)
        except OtpRejected:
            return error_response(400, "invalid_otp", "that code does not match: check the app's clock and "
                                                      "type the code it shows now")
        except MfaAdminError as exc:
            return error_response(409, exc.code, str(exc))
        except UnknownAgentError:
            return error_response(404, "not_found", "no such agent")
    return answered
