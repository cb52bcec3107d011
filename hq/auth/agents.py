"""Agent administration, the one code path for every change to agents and sessions.

The operator CLI, the directors' HTTP API (hq/http/directors.py) and start-up all change agents through
:class:`AgentAdmin`: the same checks, the same revocations (which end live sockets on every node)
and the same audit line, ``admin_action``, saying who (``actor``, ``interface``) did what
(``action``) to whom (``target``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .clearance import ClearancePolicy
from ..config import is_valid_codename
from ..audit import AuditLog
from .passwords import PasswordHasher, check_new_password, generate_password
from .sessions import SessionService
from ..store import Agent, LoginSession, Store, UnknownAgentError

FIRST_AGENT = "director"


class AgentAdminError(Exception):
    """An administrative request that cannot be carried out (bad codename, role, password...)."""


class UnknownSessionError(Exception):
    """No live (unrevoked) login session has that id."""


@dataclass(frozen=True)
class Actor:
    """Who makes a change: ``name`` a director's codename, ``cli`` (the operator) or ``hq`` (start-up);
    ``interface`` one of ``api``, ``console``, ``cli``, ``startup``."""

    name: str
    interface: str


#: The operator at the command line (``python -m hq agents ...``).
CLI_ACTOR = Actor("cli", "cli")
#: HQ itself, creating the first director on a first start.
STARTUP_ACTOR = Actor("hq", "startup")


@dataclass(frozen=True)
class PasswordSet:
    """An agent whose password was just set; ``generated`` is the password HQ made up, if it did
    (to be shown once to whoever asked, never stored or logged), else None."""

    agent: Agent
    generated: str | None


class AgentAdmin:
    """Changes to agents and sessions; revocations go through the session service's feed."""

    def __init__(self, store: Store, hasher: PasswordHasher, policy: ClearancePolicy,
                 sessions: SessionService, audit: AuditLog) -> None:
        self._store = store
        self._hasher = hasher
        self._policy = policy
        self._sessions = sessions
        self._audit = audit

    async def add(self, codename: str, role: str, password: str | None = None, *,
                  actor: Actor = CLI_ACTOR) -> PasswordSet:
        """Create an agent after checking codename, role and password rules; no password: one is generated."""
        if not is_valid_codename(codename):
            raise AgentAdminError("codenames are 1-64 characters of A-Z a-z 0-9 _ . -")
        self._check_role(role)
        generated = generate_password() if password is None else None
        password = generated if password is None else password
        check_new_password(password)
        agent = await self._store.add_agent(codename, role, await self._hasher.hash(password))
        self._record(actor, "add", agent, role=role)
        return PasswordSet(agent, generated)

    async def list(self) -> list[Agent]:
        """Every agent."""
        return await self._store.list_agents()

    async def get(self, codename: str) -> Agent:
        """One agent (codename compared regardless of case); raises :class:`UnknownAgentError`."""
        agent = await self._store.get_agent(codename) if is_valid_codename(codename) else None
        if agent is None:
            raise UnknownAgentError(codename)
        return agent

    async def last_logins(self) -> dict[str, str]:
        """Lower-case codename -> when its latest login session was opened (ISO 8601), for agents that logged in."""
        return await self._store.last_logins()

    async def with_second_factor(self) -> set[str]:
        """Lower-case codenames of the agents with a confirmed second factor (changed by MfaAdmin)."""
        return await self._store.codenames_with_mfa()

    async def live_sessions(self, with_sockets: set[str] = frozenset()) -> list[LoginSession]:
        """Login sessions not revoked that have an unspent, unexpired refresh token or, for the ids in
        ``with_sockets``, a live socket; oldest first."""
        sessions = {s.session_id: s for s in await self._store.live_sessions(time.time())}
        for session_id in with_sockets - sessions.keys():
            session = await self._store.get_session(session_id)
            if session is not None and not session.revoked:
                sessions[session_id] = session
        return sorted(sessions.values(), key=lambda s: (s.created, s.session_id))

    async def set_password(self, codename: str, password: str | None = None, *,
                           actor: Actor = CLI_ACTOR) -> PasswordSet:
        """Set a new password (generated when None) and end every session of the agent."""
        generated = generate_password() if password is None else None
        password = generated if password is None else password
        check_new_password(password)
        agent = await self._store.set_password(self._known(codename), await self._hasher.hash(password))
        self._record(actor, "passwd", agent)
        await self._sessions.revoke(agent.codename, "revoked")
        return PasswordSet(agent, generated)

    async def set_role(self, codename: str, role: str, *, actor: Actor = CLI_ACTOR) -> Agent:
        """Change the clearance level and end the agent's sessions, so no socket or token keeps the old one."""
        self._check_role(role)
        agent = await self._store.set_role(self._known(codename), role)
        self._record(actor, "role", agent, role=role)
        await self._sessions.revoke(agent.codename, "revoked")
        return agent

    async def set_enabled(self, codename: str, enabled: bool, *, actor: Actor = CLI_ACTOR) -> Agent:
        """Enable or disable; disabling ends the agent's sessions and live sockets at once."""
        agent = await self._store.set_enabled(self._known(codename), enabled)
        self._record(actor, "enable" if enabled else "disable", agent)
        if not enabled:
            await self._sessions.revoke(agent.codename, "agent_disabled")
        return agent

    async def end_session(self, session_id: str, *, actor: Actor = CLI_ACTOR) -> LoginSession:
        """Revoke one live login session; its sockets get ``session_ended {reason: "revoked"}`` on every node."""
        session = await self._store.get_session(session_id)
        if session is None or session.revoked:
            raise UnknownSessionError(session_id)
        agent = await self._store.get_agent(session.codename)
        codename = agent.codename if agent is not None else session.codename
        self._audit.record("admin_action", actor=actor.name, interface=actor.interface, action="end_session",
                           target=codename, sid=session_id)
        await self._sessions.revoke(codename, "revoked", session_id)
        return session

    async def ensure_first_agent(self) -> tuple[str, str] | None:
        """With no agents at all, create a director and return its codename and one-time password."""
        if await self._store.count_agents() > 0:
            return None
        created = await self.add(FIRST_AGENT, self._policy.levels[-1], actor=STARTUP_ACTOR)
        assert created.generated is not None
        return FIRST_AGENT, created.generated

    def check_role(self, role: str) -> None:
        """Raise :class:`AgentAdminError` unless ``role`` is a configured clearance level."""
        self._check_role(role)

    def _check_role(self, role: str) -> None:
        if not self._policy.is_role(role):
            raise AgentAdminError(f"unknown role {role!r}; one of: {', '.join(self._policy.levels)}")

    @staticmethod
    def _known(codename: str) -> str:
        """A codename that could exist; any other is unknown (never a store query with junk)."""
        if not is_valid_codename(codename):
            raise UnknownAgentError(codename)
        return codename

    def _record(self, actor: Actor, action: str, agent: Agent, role: str | None = None) -> None:
        self._audit.record("admin_action", actor=actor.name, interface=actor.interface, action=action,
                           target=agent.codename, role=role)


__all__ = ["Actor", "AgentAdmin", "AgentAdminError", "CLI_ACTOR", "FIRST_AGENT", "PasswordSet", "STARTUP_ACTOR",
           "UnknownAgentError", "UnknownSessionError"]
