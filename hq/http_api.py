"""The HTTP routes: ``/api/auth/*``, ``/healthz`` and ``/.well-known/jwks.json``.

Thin handlers: parse the request, ask the session service or the authenticator, answer JSON.
Every error is ``{"error": {"code", "message"}}``; nothing a client sends produces a 500 page, and
a backend that is down answers 503 ``unavailable``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from aiohttp import web

from .addresses import AddressResolver
from .config import Settings
from .errors import AuthError, HQError, LoginError, UnavailableError
from .auth.identity import ENROLLMENT_REQUIRED, Authenticator, Principal
from .auth.sessions import SessionService, TokenPair
from .auth.tokens import ENROLL_SCOPE, KeyRing

log = logging.getLogger(__name__)

ACCESS_COOKIE = "jwt"
REFRESH_COOKIE = "hq_refresh"
REFRESH_COOKIE_PATH = "/api/auth"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
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


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """The contract's JSON error body."""
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn aiohttp's HTML error pages and unexpected exceptions into JSON errors."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or request.path.startswith("/socket.io"):
            raise
        code = _STATUS_CODES.get(exc.status, "error")
        return error_response(exc.status, code, exc.reason, headers={
            k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")})
    except UnavailableError:  # a backend is down, whichever route met it: retry later, never a 500
        return error_response(503, "unavailable", "a backend HQ needs is down; try again shortly",
                              headers={"Retry-After": "1"})
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal", "internal error")


async def identify_request(authenticator: Authenticator, request: web.Request,
                           allow_scopes: frozenset[str] = frozenset()) -> Principal:
    """Who sent this HTTP request: the ``Authorization: Bearer`` token, else the ``jwt`` cookie
    (a restricted token only where ``allow_scopes`` names its scope)."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            raise AuthError("use the Bearer scheme", "token_invalid")
        return await authenticator.identify(token.strip(), allow_scopes)
    return await authenticator.identify(request.cookies.get(ACCESS_COOKIE), allow_scopes)


class HttpApi:
    """The JSON routes, over the session service and the authenticator."""

    def __init__(self, settings: Settings, sessions: SessionService, authenticator: Authenticator,
                 addresses: AddressResolver, keys: KeyRing, health_checks: list[HealthCheck]) -> None:
        self._settings = settings
        self._sessions = sessions
        self._auth = authenticator
        self._addresses = addresses
        self._keys = keys
        self._health_checks = health_checks
        self._failing: set[str] = set()  # backends the last /healthz found failing, to log changes only

    def routes(self) -> list[web.RouteDef]:
        """Every route this API serves."""
        return [
            web.post("/api/auth/login", self.login),
            web.post("/api/auth/refresh", self.refresh),
            web.post("/api/auth/logout", self.logout),
            web.get("/api/auth/me", self.me),
            web.get("/healthz", self.healthz),
            web.get("/.well-known/jwks.json", self.jwks),
        ]

    async def login(self, request: web.Request) -> web.Response:
        """``POST /api/auth/login {"username", "password", "otp"?}``."""
        body, problem = await self._json_body(request)
        if problem is not None:
            return problem
        username, password, otp = body.get("username"), body.get("password"), body.get("otp")
        if not isinstance(username, str) or not isinstance(password, str):
            return error_response(400, "bad_request", '"username" and "password" must be strings')
        if otp is not None and not isinstance(otp, str):
            return error_response(400, "bad_request", '"otp" must be a string: the code, or a recovery code')
        try:
            pair = await self._sessions.login(username, password, self._addresses.client_address(request), otp)
        except LoginError as exc:
            status = {"agent_disabled": 403, "too_many_attempts": 429}.get(exc.code, 401)
            headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
            return error_response(status, exc.code, exc.message, headers)
        except UnavailableError:
            return _unavailable()
        return self._token_response(pair)

    async def refresh(self, request: web.Request) -> web.Response:
        """``POST /api/auth/refresh {"refresh_token"}`` or the refresh cookie."""
        token = request.cookies.get(REFRESH_COOKIE)
        if request.can_read_body:
            body, problem = await self._json_body(request)
            if problem is not None:
                return problem
            if "refresh_token" in body:
                token = body["refresh_token"]
        if not isinstance(token, str) or not token:
            return error_response(401, "token_missing" if token is None else "token_invalid",
                                  "send a refresh token in the body or the hq_refresh cookie")
        try:
            pair = await self._sessions.refresh(token, self._addresses.client_address(request))
        except AuthError as exc:
            return self._auth_error(exc, clear_cookies=True)
        except UnavailableError:
            # Retrying with the same token is right: most likely it was not spent, and if the database
            # spent it just before the failure, ``auth.refresh_grace`` takes the retry for a lost reply.
            return _unavailable()
        return self._token_response(pair)

    async def logout(self, request: web.Request) -> web.Response:
        """``POST /api/auth/logout``: revoke the session of the presented access token."""
        try:
            # An enrolment-only session may be logged out of too.
            principal = await identify_request(self._auth, request, frozenset({ENROLL_SCOPE}))
            await self._sessions.revoke(principal.codename, "logged_out", principal.session_id,
                                        address=self._addresses.client_address(request))
        except AuthError as exc:
            return self._auth_error(exc)
        except UnavailableError:
            return _unavailable()  # most likely not revoked: the client should log out again later
        response = web.Response(status=204, headers=NO_STORE)
        self._clear_cookies(response)
        return response

    async def me(self, request: web.Request) -> web.Response:
        """``GET /api/auth/me``: who the presented access token belongs to."""
        try:
            principal = await self._identify(request)
        except AuthError as exc:
            return self._auth_error(exc)
        except UnavailableError:
            return _unavailable()
        return web.json_response({"codename": principal.codename, "role": principal.role, "exp": principal.exp},
                                 headers=NO_STORE)

    async def healthz(self, request: web.Request) -> web.Response:
        """``GET /healthz``: what a load balancer needs to know, within about a second.

        200 ``{"status": "ok"}``; 200 ``{"status": "degraded", "degraded": [...]}`` while an
        optional backend (Redis) does not answer: HQ still serves, keep routing to it; 503
        ``{"status": "unavailable", "down": [...]}`` while a required one (the database) does not:
        take the node out. Backends are asked at once, each for at most ``HEALTH_CHECK_TIMEOUT``.
        """
        problems = await asyncio.gather(*(_probe(check) for check in self._health_checks))
        failing = {check.name: problem for check, problem in zip(self._health_checks, problems) if problem}
        self._log_changes(failing)
        down = [check.name for check in self._health_checks if check.name in failing and check.required]
        degraded = [check.name for check in self._health_checks if check.name in failing and not check.required]
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

    async def jwks(self, request: web.Request) -> web.Response:
        """``GET /.well-known/jwks.json``: public verification keys (404 under HMAC)."""
        if self._keys.is_symmetric:
            return error_response(404, "not_found", "HMAC tokens have no public keys")
        return web.json_response(self._keys.jwks())

    # helpers -------------------------------------------------------------------------------------
    async def _json_body(self, request: web.Request) -> tuple[dict[str, Any], web.Response | None]:
        return await read_json_body(request, self._settings.limits.login_body_max_bytes)

    async def _identify(self, request: web.Request) -> Principal:
        return await identify_request(self._auth, request)

    def _token_response(self, pair: TokenPair) -> web.Response:
        return token_response(pair)

    def _auth_error(self, exc: AuthError, clear_cookies: bool = False) -> web.Response:
        return auth_error_response(exc, clear_cookies)

    @staticmethod
    def _clear_cookies(response: web.Response) -> None:
        clear_auth_cookies(response)


async def read_json_body(request: web.Request, limit: int) -> tuple[dict[str, Any], web.Response | None]:
    """The request's JSON object, or the contract's error answer (415, 413, 400) instead."""
    if request.content_length is not None and request.content_length > limit:
        return {}, error_response(413, "payload_too_large", f"request bodies are limited to {limit} bytes")
    if request.content_type != "application/json":
        return {}, error_response(415, "unsupported_media_type", "send Content-Type: application/json")
    raw = await _read_at_most(request, limit + 1)
    if len(raw) > limit:
        return {}, error_response(413, "payload_too_large", f"request bodies are limited to {limit} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {}, error_response(400, "bad_request", "the body is not valid JSON")
    if not isinstance(body, dict):
        return {}, error_response(400, "bad_request", "the body must be a JSON object")
    return body, None


#: What an agent whose role must use a second factor, and who has none, is told at login.
ENROLL_FIRST = ("Your role must log in with a second factor and you have none yet: enrol one now "
                "(POST /api/auth/mfa/enroll with your password, then POST /api/auth/mfa/confirm with a code). "
                "Until then this login is good for enrolling only.")


def token_response(pair: TokenPair, extra: dict[str, Any] | None = None) -> web.Response:
    """The login/refresh body and cookies for ``pair`` (an enrolment-only pair: no refresh token)."""
    body: dict[str, Any] = {
        "access_token": pair.access.token,
        "token_type": "Bearer",
        "expires_in": pair.access.lifetime,
        "agent": {"codename": pair.agent.codename, "role": pair.agent.role},
    }
    if pair.refresh_token is not None:
        body["refresh_token"] = pair.refresh_token
    if pair.scope is not None:
        body.update(scope=pair.scope, message=ENROLL_FIRST)
    response = web.json_response({**body, **(extra or {})}, headers=NO_STORE)
    response.set_cookie(ACCESS_COOKIE, pair.access.token, max_age=pair.access.lifetime, path="/",
                        httponly=True, secure=True, samesite="Strict")
    if pair.refresh_token is not None:
        response.set_cookie(REFRESH_COOKIE, pair.refresh_token, max_age=pair.refresh_ttl,
                            path=REFRESH_COOKIE_PATH, httponly=True, secure=True, samesite="Strict")
    return response


def auth_error_response(exc: AuthError, clear_cookies: bool = False) -> web.Response:
    """401 with the token code (403 ``mfa_enrollment_required`` for a token that may only enrol)."""
    status = 403 if exc.code == ENROLLMENT_REQUIRED else 401
    response = error_response(status, exc.code, exc.message,
                              headers={"WWW-Authenticate": f'Bearer error="{_bearer_error(exc)}"', **NO_STORE})
    if clear_cookies:
        clear_auth_cookies(response)
    return response


def clear_auth_cookies(response: web.Response) -> None:
    """Expire both token cookies."""
    response.del_cookie(ACCESS_COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
    response.del_cookie(REFRESH_COOKIE, path=REFRESH_COOKIE_PATH, secure=True, httponly=True,
                        samesite="Strict")


async def _probe(check: HealthCheck) -> str | None:
    """None when the backend answered in time, else what went wrong (one short line)."""
    try:
        async with asyncio.timeout(HEALTH_CHECK_TIMEOUT):
            await check.probe()
    except TimeoutError:
        return f"no answer within {HEALTH_CHECK_TIMEOUT:g} s"
    except Exception as exc:  # whatever the driver raises, down is down; the log says why
        text = str(exc).splitlines()[0] if str(exc) else ""
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return None


def _unavailable() -> web.Response:
    """503 ``unavailable``: a backend is down; the message never quotes the driver's error."""
    return error_response(503, "unavailable", "HQ cannot reach a backend it needs; try again shortly",
                          headers={"Retry-After": "1"})


async def _read_at_most(request: web.Request, size: int) -> bytes:
    """Up to ``size`` bytes of the body; ``content.read(n)`` alone stops at the first chunk."""
    raw = bytearray()
    while len(raw) < size:
        chunk = await request.content.read(size - len(raw))
        if not chunk:
            break
        raw += chunk
    return bytes(raw)


def _bearer_error(exc: HQError) -> str:
    if exc.code == ENROLLMENT_REQUIRED:
        return "insufficient_scope"  # RFC 6750: a valid token without the privileges asked for
    return "invalid_request" if exc.code == "token_missing" else "invalid_token"
