"""The one interface every storage backend implements."""

from __future__ import annotations

from typing import Protocol

from ..errors import UnavailableError
from .models import Agent, LoginSession, Message, MfaRecord, RefreshResult, Revocation, ServiceKey
from .pruning import PruneReport, Retention


class AgentExistsError(Exception):
    """An agent with that codename (compared regardless of case) already exists."""


class ServiceKeyExistsError(Exception):
    """A service key not revoked already has that name (compared regardless of case)."""


class UnknownAgentError(Exception):
    """No agent has that codename."""


class StoreUnavailable(UnavailableError):
    """The database cannot be reached or did not answer in time; nothing was changed *for sure*.

    Every backend raises this, and only this, for connection-level failures (refused, reset,
    restarting, timed out), so callers never see a driver's exceptions. The operation may be retried
    once the database is back; the backend reconnects by itself. A write that failed this way was
    not acknowledged: in the rare case where the database committed it just before the connection
    broke, a retry stores it a second time rather than losing it.
    """


class Store(Protocol):
    """Agents, login sessions, refresh tokens, the revocation feed and channel messages.

    Any method may raise :class:`StoreUnavailable` while the database is down or too slow.
    """

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...

    async def add_agent(self, codename: str, role: str, password_hash: str) -> Agent: ...
    async def get_agent(self, codename: str) -> Agent | None: ...
    async def list_agents(self) -> list[Agent]: ...
    async def count_agents(self) -> int: ...
    async def set_password(self, codename: str, password_hash: str) -> Agent: ...
    async def set_enabled(self, codename: str, enabled: bool) -> Agent: ...
    async def set_role(self, codename: str, role: str) -> Agent: ...

    async def create_session(self, session_id: str, codename: str) -> None: ...
    async def get_session(self, session_id: str) -> LoginSession | None: ...
    async def get_agent_and_session(self, codename: str, session_id: str) -> tuple[Agent | None, LoginSession | None]: ...
    async def revoke_sessions(self, codename: str, reason: str, session_id: str | None = None) -> list[str]: ...
    async def revocations_after(self, cursor: int) -> list[Revocation]: ...
    async def last_revocation_id(self) -> int: ...
    # the directors' API (hq/http/directors.py) lists agents and live sessions
    async def last_logins(self) -> dict[str, str]:
        """Lower-case codename -> ``created`` of its newest login session, for every agent that has one."""
        ...
    async def live_sessions(self, now: float) -> list[LoginSession]:
        """Unrevoked login sessions holding a refresh token that is neither spent nor expired at ``now``."""
        ...
    async def codenames_with_mfa(self) -> set[str]:
        """Lower-case codenames of every agent with a *confirmed* second factor (a pending enrolment
        is not one), in one query for the whole agents list."""
        ...

    async def add_refresh_token(self, token_hash: str, session_id: str, expires_at: float) -> None: ...

    # service keys (hq/auth/service_keys.py)
    async def add_service_key(self, key_id: str, name: str, role: str, key_hash: str) -> ServiceKey:
        """Store a new key by its hash; :class:`ServiceKeyExistsError` if a live key has that name (any case)."""
        ...
    async def list_service_keys(self) -> list[ServiceKey]:
        """Every key not revoked, oldest first."""
        ...
    async def service_key_by_hash(self, key_hash: str) -> ServiceKey | None:
        """The key (revoked or not) stored under ``key_hash``."""
        ...
    async def revoke_service_key(self, name: str) -> ServiceKey | None:
        """Revoke the live key named ``name`` (any case) and append it to the revocation feed, in one
        transaction; None (nothing changed) when no live key has that name."""
        ...
    async def touch_service_keys(self, last_used: dict[str, str]) -> None:
        """Record when keys were last used (key id -> ISO 8601 time), never moving a time backwards."""
        ...
    async def rotate_refresh_token(self, old_hash: str, new_hash: str, new_expires_at: float,
                                   now: float, grace: float = 0.0) -> RefreshResult:
        """Spend ``old_hash`` and store ``new_hash``, atomically.

        An unspent, unexpired token of a live session is ROTATED. A spent one is REUSED (the
        session is revoked) unless it is the token most recently rotated, presented within
        ``grace`` seconds of that rotation, while the child it got is still unspent: then the
        child is spent and ``new_hash`` replaces it (GRACE), so one refresh token stays live.
        The rule is :func:`hq.store.rules.decide_rotation`; a backend only opens a transaction and runs
        :func:`hq.store.rotation.rotate_in_transaction` in it.
        """
        ...

    async def prune(self, retention: Retention, now: float) -> PruneReport | None:
        """Delete the revocation feed entries, sessions, refresh tokens and successors that nothing
        needs any more at ``now`` (hq/store/pruning.py), in one transaction; None, deleting nothing,
        when another node — or an earlier call — has pruned within this round."""
        ...

    async def add_message(self, channel: str, sender: str, text: str, ts: str) -> Message:
        """Store a message durably (group-committed with concurrent calls: hq/store/batching.py); its
        id is one more than the channel's last, and it is returned only once committed."""
        ...
    async def history(self, channel: str, after_id: int | None, limit: int) -> list[Message]: ...
    async def last_message_id(self, channel: str) -> int: ...

    # second factors (hq/auth/mfa.py): every change is one conditional statement, so that two
    # nodes racing on one agent cannot both win.
    async def get_mfa(self, codename: str) -> MfaRecord | None: ...
    async def begin_mfa(self, codename: str, secret_box: str) -> bool:
        """Store a pending (unconfirmed) secret, replacing a pending one; False if one is confirmed."""
        ...
    async def confirm_mfa(self, codename: str, secret_box: str, step: int, recovery_hashes: list[str]) -> bool:
        """Confirm the pending secret ``secret_box`` (its code matched ``step``) and replace the
        recovery codes; False if that secret is no longer the pending one."""
        ...
    async def use_totp_step(self, codename: str, step: int) -> bool:
        """Record ``step`` as used if it is newer than the last one used; False for a replay."""
        ...
    async def use_recovery_code(self, codename: str, code_hash: str, now: float) -> bool:
        """Spend an unspent recovery code of a confirmed enrolment; False if there is none such."""
        ...
    async def reset_mfa(self, codename: str) -> bool:
        """Remove the agent's second factor and recovery codes; False if it had none."""
        ...
