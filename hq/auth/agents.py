"""Agent administration shared by the operator CLI and start-up: add, list, passwd, enable, disable."""

from __future__ import annotations

from .clearance import ClearancePolicy
from ..config import is_valid_codename
from .passwords import PasswordHasher, check_new_password, generate_password
from .sessions import SessionService
from ..store import Agent, Store, UnknownAgentError

FIRST_AGENT = "director"


class AgentAdminError(Exception):
    """An administrative request that cannot be carried out (bad codename, role, password...)."""


class AgentAdmin:
    """Operator actions on agents; revocations go through the session service's feed."""

    def __init__(self, store: Store, hasher: PasswordHasher, policy: ClearancePolicy,
                 sessions: SessionService) -> None:
        self._store = store
        self._hasher = hasher
        self._policy = policy
        self._sessions = sessions

    async def add(self, codename: str, role: str, password: str) -> Agent:
        """Create an agent after checking codename, role and password rules."""
        if not is_valid_codename(codename):
            raise AgentAdminError("codenames are 1-64 characters of A-Z a-z 0-9 _ . -")
        if not self._policy.is_role(role):
            raise AgentAdminError(f"unknown role {role!r}; one of: {', '.join(self._policy.levels)}")
        check_new_password(password)
        return await self._store.add_agent(codename, role, await self._hasher.hash(password))

    async def list(self) -> list[Agent]:
        """Every agent."""
        return await self._store.list_agents()

    async def set_password(self, codename: str, password: str) -> Agent:
        """Set a new password and end every session of the agent."""
        check_new_password(password)
        agent = await self._store.set_password(codename, await self._hasher.hash(password))
        await self._sessions.revoke(agent.codename, "revoked")
        return agent

    async def set_role(self, codename: str, role: str) -> Agent:
        """Change the clearance level and end the agent's sessions, so no socket or token keeps the old one."""
        if not self._policy.is_role(role):
            raise AgentAdminError(f"unknown role {role!r}; one of: {', '.join(self._policy.levels)}")
        agent = await self._store.set_role(codename, role)
        await self._sessions.revoke(agent.codename, "revoked")
        return agent

    async def set_enabled(self, codename: str, enabled: bool) -> Agent:
        """Enable or disable; disabling ends the agent's sessions and live sockets at once."""
        agent = await self._store.set_enabled(codename, enabled)
        if not enabled:
            await self._sessions.revoke(agent.codename, "agent_disabled")
        return agent

    async def ensure_first_agent(self) -> tuple[str, str] | None:
        """With no agents at all, create a director and return its codename and one-time password."""
        if await self._store.count_agents() > 0:
            return None
        password = generate_password()
        await self.add(FIRST_AGENT, self._policy.levels[-1], password)
        return FIRST_AGENT, password


__all__ = ["AgentAdmin", "AgentAdminError", "UnknownAgentError", "FIRST_AGENT"]
