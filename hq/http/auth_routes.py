"""The routes of ``/api/auth``: login, refresh, logout and me, plus ``/.well-known/jwks.json``.

Thin handlers: parse the request, ask the session service or the authenticator, answer JSON. To
refuse they raise; :mod:`hq.http.boundary` answers (a backend that is down: 503 ``unavailable``).
"""

from __future__ import annotations

from aiohttp import web

from ..addresses import AddressResolver
from ..auth.identity import Authenticator
from ..auth.sessions import SessionService
from ..auth.tokens import ENROLL_SCOPE, KeyRing
from ..config import Settings
from ..errors import AuthError, RequestError
from .bodies import read_json_body
from .boundary import clear_cookies_on_token_error
from .guards import identify_request
from .headers import NO_STORE
from .tokens import REFRESH_COOKIE, clear_auth_cookies, token_response


class AuthRoutes:
    """``/api/auth/login``, ``/refresh``, ``/logout``, ``/me`` and the JWKS, over the session service
    and the authenticator."""

    def __init__(self, settings: Settings, sessions: SessionService, authenticator: Authenticator,
                 addresses: AddressResolver, keys: KeyRing) -> None:
        self._body_limit = settings.limits.login_body_max_bytes
        self._sessions = sessions
        self._auth = authenticator
        self._addresses = addresses
        self._keys = keys

    def routes(self) -> list[web.RouteDef]:
        """Every route of this group."""
        return [
            web.post("/api/auth/login", self.login),
            web.post("/api/auth/refresh", self.refresh),
            web.post("/api/auth/logout", self.logout),
            web.get("/api/auth/me", self.me),
            web.get("/.well-known/jwks.json", self.jwks),
        ]

    async def login(self, request: web.Request) -> web.Response:
        """``POST /api/auth/login {"username", "password", "otp"?}``."""
        body = await read_json_body(request, self._body_limit)
        username, password, otp = body.get("username"), body.get("password"), body.get("otp")
        if not isinstance(username, str) or not isinstance(password, str):
            raise RequestError('"username" and "password" must be strings', "bad_request")
        if otp is not None and not isinstance(otp, str):
            raise RequestError('"otp" must be a string: the code, or a recovery code', "bad_request")
        pair = await self._sessions.login(username, password, self._addresses.client_address(request), otp)
        return token_response(pair)

    async def refresh(self, request: web.Request) -> web.Response:
        """``POST /api/auth/refresh {"refresh_token"}`` or the refresh cookie.

        A refused refresh token also expires the cookies: that session is over. A backend that is
        down leaves them: retrying with the same token is right (most likely it was not spent, and if
        the database spent it just before the failure, ``auth.refresh_grace`` takes the retry).
        """
        clear_cookies_on_token_error(request)
        token = request.cookies.get(REFRESH_COOKIE)
        if request.can_read_body:
            body = await read_json_body(request, self._body_limit)
            if "refresh_token" in body:
                token = body["refresh_token"]
        if not isinstance(token, str) or not token:
            raise AuthError("send a refresh token in the body or the hq_refresh cookie",
                            "token_missing" if token is None else "token_invalid")
        pair = await self._sessions.refresh(token, self._addresses.client_address(request))
        return token_response(pair)

    async def logout(self, request: web.Request) -> web.Response:
        """``POST /api/auth/logout``: revoke the session of the presented access token.

        A backend that is down (503) most likely left it unrevoked: the client should log out again later.
        """
        # An enrolment-only session may be logged out of too.
        principal = await identify_request(self._auth, request, frozenset({ENROLL_SCOPE}))
        await self._sessions.revoke(principal.codename, "logged_out", principal.session_id,
                                    address=self._addresses.client_address(request))
        response = web.Response(status=204, headers=NO_STORE)
        clear_auth_cookies(response)
        return response

    async def me(self, request: web.Request) -> web.Response:
        """``GET /api/auth/me``: who the presented access token belongs to."""
        principal = await identify_request(self._auth, request)
        return web.json_response({"codename": principal.codename, "role": principal.role, "exp": principal.exp},
                                 headers=NO_STORE)

    async def jwks(self, request: web.Request) -> web.Response:
        """``GET /.well-known/jwks.json``: public verification keys (404 under HMAC)."""
        if self._keys.is_symmetric:
            raise RequestError("HMAC tokens have no public keys", "not_found")
        return web.json_response(self._keys.jwks())
