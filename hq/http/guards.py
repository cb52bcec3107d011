"""Who may call a protected HTTP route, as rules every route shares; each refuses by raising.

- Who the caller is: the ``Authorization: Bearer`` token, else the ``jwt`` cookie
  (:func:`identify_request`; 401 :class:`~hq.errors.AuthError`).
- A director is an agent whose *stored* role is the highest clearance level.
- A change (POST, PATCH, DELETE) is authorised by ``Authorization: Bearer``, or by the ``jwt``
  cookie only together with the header ``X-HQ-Console: 1``: a cross-site form or link cannot send
  that header, so a cookie alone never changes anything.
- A director's changes are limited (a token bucket per director, ``[limits] director_changes_burst``
  at once, then ``director_changes_per_second``), on every route that changes agents or sessions.
"""

from __future__ import annotations

import math

from aiohttp import web

from ..auth.agents import Actor
from ..auth.identity import Authenticator, Principal
from ..auth.limits import TokenBucket
from ..config import LimitsSettings
from ..errors import AuthError, RequestError
from .tokens import ACCESS_COOKIE

#: The header that makes the ``jwt`` cookie good for a change (the console sends it).
CONSOLE_HEADER = "X-HQ-Console"

async def identify_request(authenticator: Authenticator, request: web.Request,
                           allow_scopes: frozenset[str] = frozenset()) -> Principal:
    """Who sent this HTTP request: the ``Authorization: Bearer`` token, else the ``jwt`` cookie
    (a restricted token only where ``allow_scopes`` names its scope); raises :class:`AuthError`."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            raise AuthError("use the Bearer scheme", "token_invalid")
        return await authenticator.identify(token.strip(), allow_scopes)
    return await authenticator.identify(request.cookies.get(ACCESS_COOKIE), allow_scopes)


def is_bearer(request: web.Request) -> bool:
    """Whether the request carries its token as ``Authorization: Bearer`` (else the cookie)."""
    return "Authorization" in request.headers


def actor(request: web.Request, principal: Principal) -> Actor:
    """As whom a change is audited: the agent, through the API (Bearer) or the console (cookie)."""
    return Actor(principal.codename, "api" if is_bearer(request) else "console")


def require_change_allowed(request: web.Request) -> None:
    """Refuse a change carried by the cookie alone (403 ``forbidden``)."""
    if not is_bearer(request) and request.headers.get(CONSOLE_HEADER) != "1":
        raise RequestError(f"a change authorised by the session cookie needs the header "
                           f"{CONSOLE_HEADER}: 1 (or use Authorization: Bearer)", "forbidden")


class ChangeLimiter:
    """A token bucket per director (by codename, any case) on the changes they make."""

    def __init__(self, limits: LimitsSettings) -> None:
        self._rate = limits.director_changes_per_second
        self._burst = limits.director_changes_burst
        self._buckets: dict[str, TokenBucket] = {}

    def spend(self, codename: str) -> int:
        """Spend one change; 0 when allowed, else the seconds until the next one is."""
        bucket = self._buckets.setdefault(codename.lower(), TokenBucket(self._rate, self._burst))
        if bucket.take():
            return 0
        return max(1, math.ceil((1 - bucket.tokens) / self._rate))


class DirectorGuard:
    """The rule of every directors' route: who the caller is, that it is a director, and for a change
    that it was allowed (header) and within the director's budget. One per node, shared by every
    directors' route so that one budget covers them all."""

    def __init__(self, authenticator: Authenticator, director_role: str, limiter: ChangeLimiter | None = None) -> None:
        self._auth = authenticator
        self.director_role = director_role
        self._limiter = limiter or ChangeLimiter(LimitsSettings())

    async def reader(self, request: web.Request) -> Principal:
        """The director behind a read; raises :class:`AuthError` (401) or :class:`RequestError` ``forbidden``."""
        principal = await identify_request(self._auth, request)
        if principal.role != self.director_role:
            raise RequestError(f"only a {self.director_role} may use this", "forbidden")
        return principal

    async def changer(self, request: web.Request) -> tuple[Principal, Actor]:
        """The director behind a change and as whom it is audited; also 403 without the header, 429 past the budget."""
        principal = await self.reader(request)
        require_change_allowed(request)
        wait = self._limiter.spend(principal.codename)
        if wait:
            raise RequestError(f"too many changes; try again in {wait} s", "too_many_attempts", retry_after=wait)
        return principal, actor(request, principal)
