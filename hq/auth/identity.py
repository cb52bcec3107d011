"""Who is this? The one question the HTTP routes and the Socket.IO handlers ask.

A token alone is not enough: the agent must still exist and be enabled, the login session must not
be revoked, and clearance comes from the agent's stored role, never from the token's claim.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import AuthError
from ..store import Store
from .tokens import TokenService


@dataclass(frozen=True)
class Principal:
    """An authenticated agent: stored codename and role, its login session and token expiry."""

    codename: str
    role: str
    sid: str
    exp: int


class Authenticator:
    """Turns an access token into a :class:`Principal` or raises :class:`AuthError`."""

    def __init__(self, tokens: TokenService, store: Store) -> None:
        self._tokens = tokens
        self._store = store

    async def identify(self, token: str | None) -> Principal:
        """Verify the token and the agent and session behind it."""
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
        return Principal(codename=agent.codename, role=agent.role, sid=claims.sid, exp=claims.exp)
