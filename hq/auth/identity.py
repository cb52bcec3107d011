"""Who is this? The one question the HTTP routes and the Socket.IO handlers ask.

A token alone is not enough: the agent must still exist and be enabled, the login session must not
be revoked, and clearance comes from the agent's stored role, never from the token's claim.

A token restricted to enrolling a second factor (``scope: mfa_enroll``, see hq/auth/sessions.py)
is refused with ``mfa_enrollment_required`` by every caller that does not name that scope: only the
enrolment routes and logout do, so it opens no socket and reads no channel.

A service key (``hqk_…``, hq/auth/service_keys.py) is accepted only by callers that say so by
passing the client's address (the real-time endpoints and the channels API); everywhere else —
``/api/auth/*``, the directors' API, the console — it is ``token_invalid``. Its principal is
``key:NAME`` with the key's role, its id in place of a session, and no expiry.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import AuthError
from ..store import Store
from .service_keys import ServiceKeys, is_service_key, key_identity
from .tokens import TokenService

#: The code for a restricted token presented where it does not reach (HTTP answers 403).
ENROLLMENT_REQUIRED = "mfa_enrollment_required"


@dataclass(frozen=True)
class Principal:
    """An authenticated agent (stored codename and role, its login session and token expiry) or
    service key (``key:NAME``, its role, its key id and no expiry: ``exp`` None)."""

    codename: str
    role: str
    session_id: str
    exp: int | None
    scope: str | None = None


class Authenticator:
    """Turns an access token into a :class:`Principal` or raises :class:`AuthError`."""

    def __init__(self, tokens: TokenService, store: Store, service_keys: ServiceKeys | None = None) -> None:
        self._tokens = tokens
        self._store = store
        self._service_keys = service_keys

    async def identify(self, token: str | None, allow_scopes: frozenset[str] = frozenset(), *,
                       service_key_address: str | None = None) -> Principal:
        """Verify the token and the agent and session behind it; a restricted token only where
        ``allow_scopes`` names its scope; a service key only where ``service_key_address`` (the
        client's address, charged with a failed login for a wrong key) is given."""
        if not token:
            raise AuthError("no token was sent", "token_missing")
        if is_service_key(token):
            if service_key_address is None or self._service_keys is None:
                raise AuthError("service keys are not accepted here: log in for a token", "token_invalid")
            key = await self._service_keys.verify(token, service_key_address)
            return Principal(codename=key_identity(key.name), role=key.role, session_id=key.key_id, exp=None)
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
