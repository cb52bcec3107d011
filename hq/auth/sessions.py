"""Login sessions: log in with a password, refresh with a rotating token, log out, revoke.

This is where credentials become tokens: :class:`~hq.auth.credentials.CredentialCheck` checks them
(password, second factor, login limits: the one check every door asks) and a session is opened for
the agent it returns. Revocation is written to the store's feed, which every HQ node follows (see
:mod:`hq.cluster.revocation`), and told at once to local listeners.

A second factor (hq/auth/mfa.py) is asked for only after a correct password: an enrolled agent must
send ``otp`` (``mfa_required`` without it, ``invalid_otp`` for a wrong or replayed code, counted by
the login limits like a wrong password). An agent whose role must use one (``auth.mfa_required``)
but has none gets a session good only for enrolling one: an access token with ``scope:
mfa_enroll``, no refresh token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable

from ..audit import AuditLog
from ..clock import Clock, SystemClock
from ..config import AuthSettings
from ..errors import AuthError
from ..store import Agent, RefreshOutcome, Store
from .credentials import CredentialCheck
from .tokens import ENROLL_SCOPE, IssuedToken, TokenService, hash_refresh_token, new_refresh_token, new_session_id

RevocationListener = Callable[[str, str | None, str], Awaitable[object]]
#: The longest an enrolment-only token lives (less when ``auth.access_ttl`` is shorter): long
#: enough to scan a QR code and type a code, and it cannot be refreshed.
ENROLLMENT_TOKEN_TTL = 600


@dataclass(frozen=True)
class TokenPair:
    """What login and refresh hand back: an access token, a refresh token, and whose they are.

    An enrolment-only login (``scope`` set) has no refresh token.
    """

    agent: Agent
    access: IssuedToken
    refresh_token: str | None
    refresh_ttl: int
    scope: str | None = None


class SessionService:
    """Issues, rotates and revokes login sessions."""

    def __init__(self, store: Store, credentials: CredentialCheck, tokens: TokenService, audit: AuditLog,
                 auth: AuthSettings, clock: Clock | None = None) -> None:
        self._clock = SystemClock() if clock is None else clock  # refresh-token expiry and grace
        self._store = store
        self._credentials = credentials
        self._tokens = tokens
        self._audit = audit
        self._auth = auth
        self._listeners: list[RevocationListener] = []

    def on_revoke(self, listener: RevocationListener) -> None:
        """Call ``listener(codename, session_id, reason)`` whenever this node revokes sessions (``session_id``
        None: every session of ``codename``)."""
        self._listeners.append(listener)

    async def login(self, codename: str, password: str, address: str, otp: str | None = None) -> TokenPair:
        """Check a password (and, for an enrolled agent, ``otp``) and open a session; raises :class:`LoginError`."""
        verified = await self._credentials.check(codename, password, address, otp)
        if verified.must_enrol:
            return await self._open(verified.agent, address, scope=ENROLL_SCOPE)
        return await self._open(verified.agent, address, factor=verified.factor,
                                recovery_codes_left=verified.recovery_codes_left)

    async def check_password(self, agent: Agent, password: str, address: str) -> None:
        """Ask for the password again before a sensitive change (enrolling a second factor):
        throttled and counted like a login; raises :class:`LoginError`."""
        await self._credentials.check_password(agent, password, address)

    async def finish_enrollment(self, agent: Agent, enrollment_sid: str, address: str) -> TokenPair:
        """Swap an enrolment-only session for a full one, once the agent has confirmed a code."""
        await self.revoke(agent.codename, "logged_out", enrollment_sid, address=address)
        return await self._open(agent, address, factor="totp")

    async def _open(self, agent: Agent, address: str, scope: str | None = None, factor: str = "password",
                    recovery_codes_left: int | None = None) -> TokenPair:
        """A new login session and its tokens (an enrolment-only one with ``scope``)."""
        session_id = new_session_id()
        await self._store.create_session(session_id, agent.codename)
        if scope is None:
            pair = await self._issue(agent, session_id)
        else:
            lifetime = min(self._auth.access_ttl, ENROLLMENT_TOKEN_TTL)
            pair = TokenPair(agent, self._tokens.issue(agent.codename, agent.role, session_id, scope=scope,
                                                       lifetime=lifetime), None, 0, scope)
        self._audit.record("login_succeeded", codename=agent.codename, address=address, factor=factor,
                           enrollment_only=True if scope else None, recovery_codes_left=recovery_codes_left)
        return pair

    async def refresh(self, refresh_token: str, address: str) -> TokenPair:
        """Spend a refresh token for a new pair; reuse of a spent one revokes the whole session.

        The one exception is ``auth.refresh_grace``: the token most recently rotated, presented
        again within that many seconds while the token it was exchanged for is still unspent, is
        taken for a client retrying after a lost reply and gets a fresh pair. The token the first
        exchange issued is then spent, so the session still has exactly one live refresh token
        and whichever holder is left with the spent one revokes the session when it presents it.
        """
        new_token, new_hash = new_refresh_token()
        now = self._clock.time()
        result = await self._store.rotate_refresh_token(
            hash_refresh_token(refresh_token), new_hash, now + self._auth.refresh_ttl, now,
            grace=self._auth.refresh_grace)
        if result.outcome is RefreshOutcome.REUSED:
            assert result.codename is not None
            self._audit.record("refresh_refused", codename=result.codename, address=address, code="token_reused")
            await self._notify(result.codename, result.session_id, "revoked")
            raise AuthError("refresh token was already used; the session is revoked", "token_reused")
        if result.outcome is RefreshOutcome.EXPIRED:
            raise AuthError("refresh token has expired", "token_expired")
        agent = await self._store.get_agent(result.codename) if result.codename else None
        if not result.issued or agent is None or result.session_id is None:
            raise AuthError("refresh token is not valid", "token_invalid")
        if not agent.enabled:
            raise AuthError("agent is disabled", "agent_disabled")
        # A grace retry is marked so that an operator can tell lost replies (or a racing thief) apart.
        self._audit.record("token_refreshed", codename=agent.codename, address=address,
                           grace=True if result.outcome is RefreshOutcome.GRACE else None)
        access = self._tokens.issue(agent.codename, agent.role, result.session_id)
        return TokenPair(agent, access, new_token, self._auth.refresh_ttl)

    async def revoke(self, codename: str, reason: str, session_id: str | None = None, address: str | None = None) -> None:
        """Revoke one session (or all of an agent's) everywhere and end local sockets at once."""
        await self._store.revoke_sessions(codename, reason, session_id)
        self._audit.record("session_revoked", codename=codename, reason=reason, address=address,
                           scope="session" if session_id else "agent")
        await self._notify(codename, session_id, reason)

    async def announce_revocation(self, codename: str, session_id: str, reason: str) -> None:
        """Tell the listeners (this node's sockets, the other nodes) of a revocation the store's feed
        already holds, made outside a login session: a service key's (hq/auth/service_keys.py), whose
        id stands for ``session_id``."""
        await self._notify(codename, session_id, reason)

    async def _issue(self, agent: Agent, session_id: str) -> TokenPair:
        refresh_token, refresh_hash = new_refresh_token()
        await self._store.add_refresh_token(refresh_hash, session_id, self._clock.time() + self._auth.refresh_ttl)
        access = self._tokens.issue(agent.codename, agent.role, session_id)
        return TokenPair(agent, access, refresh_token, self._auth.refresh_ttl)

    async def _notify(self, codename: str, session_id: str | None, reason: str) -> None:
        for listener in self._listeners:
            await listener(codename, session_id, reason)

