"""The answer that hands out tokens (login, refresh, a finished enrolment) and the cookies it sets.

Cookies: ``jwt=<access>; Path=/`` and ``hq_refresh=<refresh>; Path=/api/auth``, both HttpOnly,
Secure and SameSite=Strict, with Max-Age the token's lifetime; the answer is never cached.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..auth.sessions import TokenPair
from .headers import NO_STORE

ACCESS_COOKIE = "jwt"
REFRESH_COOKIE = "hq_refresh"
REFRESH_COOKIE_PATH = "/api/auth"

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


def clear_auth_cookies(response: web.StreamResponse) -> None:
    """Expire both token cookies."""
    response.del_cookie(ACCESS_COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
    response.del_cookie(REFRESH_COOKIE, path=REFRESH_COOKIE_PATH, secure=True, httponly=True,
                        samesite="Strict")
