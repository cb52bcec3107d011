"""Who is this? The one question the HTTP routes and the Socket.IO handlers ask.

A token alone is not enough: the agent must still exist and be enabled, the login session must not
be revoked, and clearance comes from the agent's stored role, never from the token's claim.

A token restricted to enrolling a second factor (``scope: mfa_enroll``, see hq/auth/sessions.py)
is refused with ``mfa_enrollment_required`` by every caller that does not name that scope: only the
enrolment routes and logout do, so it opens no socket and reads no channel.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import AuthError
from ..store import Store
from .tokens import TokenService

#: The code for a restricted token presented where it does not reach (HTTP answers 403).
ENROLLMENT_REQUIRED = "mfa_enrollment_required"


@dataclass(frozen=True)
class Principal:
    """An authenticated agent: stored codename and role, its login session and token expiry."""

    codename: str
    role: str
    session_id: str
    exp: int
    scope: str | None = None


class Authenticator:
    """Turns an access token into a :class:`Principal` or raises :class:`AuthError`."""

    def __init__(self, tokens: TokenService, store: Store) -> None:
        self._tokens = tokens
        self._store = store

    async def identify(self, token: str | None, allow_scopes: frozenset[str] = frozenset()) -> Principal:
        """Verify the token and the agent and session behind it; a restricted token only where
        ``allow_scopes`` names its scope."""
        if not token:
            raise AuthError("no token was sent", "token_missing")
        claims = self._tokens.verify(token)
        agent, session = await self._store.get_agent_and_session(claims.sub, claims.sid)
        if agent is None or agent.codename != claims.sub:
            raise AuthError("token is not valid", "token_invalid")
        if not agent.enabled:
            raise AuthError("agent is disabled", "agent_disabled")
        if session is None or session.codename != agent.codename.lower():
            raise AuthError("token is not valid", "token_invalid")
        if session.revoked:
            raise AuthError("session has been revoked", "token_revoked")
        if claims.scope is not None and claims.scope not in allow_scopes:
            raise AuthError("this token is good only for enrolling a second factor: enrol one "
                            "(POST /api/auth/mfa/enroll), then log in with a code", ENROLLMENT_REQUIRED)
        return Principal(codename=agent.codename, role=agent.role, session_id=claims.sid, exp=claims.exp,
                         scope=claims.scope)
