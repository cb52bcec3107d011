"""Enrolling and resetting second factors: the one code path for the CLI, the directors' API and an
agent enrolling itself.

Enrolment has two steps. :meth:`MfaAdmin.begin` makes a secret, stores it sealed and *pending*, and
hands back the ``otpauth://`` URI and QR code, once; a pending secret does not count at login.
:meth:`MfaAdmin.confirm` takes a code from the app: only a code that matches the pending secret
completes the enrolment, and only then are the ten recovery codes made (and shown, once). A reset
removes the factor and its recovery codes and ends the agent's sessions everywhere. Every change is
audited as ``admin_action`` (``mfa_enroll``, ``mfa_confirm``, ``mfa_reset``) with who did it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..config import is_valid_codename
from ..audit import AuditLog
from ..store import Agent, Store, UnknownAgentError
from .agents import CLI_ACTOR, Actor
from .mfa import (Enrollment, OtpRejected, SecondFactor, enrollment_for, hash_recovery_code, is_totp_code,
                  matching_step, new_recovery_codes, new_totp_secret)
from .sessions import SessionService


class MfaAdminError(Exception):
    """An enrolment step that does not fit the agent's state; ``code`` is the contract-style code:
    ``mfa_already_enrolled`` (reset first) or ``mfa_not_pending`` (begin first)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class MfaStatus:
    """Whether an agent has a second factor, must have one, and how many recovery codes are left."""

    enrolled: bool
    pending: bool
    required: bool
    recovery_codes_left: int

    def to_json(self) -> dict[str, object]:
        """The HTTP body of ``GET /api/auth/mfa``."""
        return {"enrolled": self.enrolled, "pending": self.pending, "required": self.required,
                "recovery_codes_left": self.recovery_codes_left}


class MfaAdmin:
    """Begin, confirm and reset second factors; revocations go through the session service's feed."""

    def __init__(self, store: Store, second_factor: SecondFactor, sessions: SessionService, audit: AuditLog) -> None:
        self._store = store
        self._factor = second_factor
        self._sessions = sessions
        self._audit = audit

    @property
    def second_factor(self) -> SecondFactor:
        """The login-time check, for the other ways in (the Admin UI)."""
        return self._factor

    async def agent(self, codename: str) -> Agent:
        """The stored agent; raises :class:`UnknownAgentError`."""
        agent = await self._store.get_agent(codename) if is_valid_codename(codename) else None
        if agent is None:
            raise UnknownAgentError(codename)
        return agent

    async def status(self, codename: str) -> MfaStatus:
        """The agent's second factor as far as it may be told (never the secret)."""
        agent = await self.agent(codename)
        record = await self._store.get_mfa(agent.codename)
        return MfaStatus(enrolled=bool(record and record.confirmed), pending=bool(record and not record.confirmed),
                         required=self._factor.required_for(agent),
                         recovery_codes_left=record.recovery_codes_left if record and record.confirmed else 0)

    async def begin(self, codename: str, *, actor: Actor = CLI_ACTOR) -> Enrollment:
        """Make and store (sealed, pending) a new secret; the URI and QR code to show once.

        A pending secret from an earlier start is replaced; a confirmed one is not
        (:class:`MfaAdminError` ``mfa_already_enrolled``: reset it first).
        """
        agent = await self.agent(codename)
        secret = new_totp_secret()
        if not await self._store.begin_mfa(agent.codename, self._factor.box.seal(secret, agent.codename)):
            raise MfaAdminError(f"{agent.codename} already has a second factor; reset it first "
                                "(python -m hq agents mfa reset, or DELETE /api/agents/{codename}/mfa)",
                                "mfa_already_enrolled")
        self._record(actor, "mfa_enroll", agent)
        return enrollment_for(agent.codename, secret, self._factor.issuer)

    async def confirm(self, codename: str, code: str, *, actor: Actor = CLI_ACTOR,
                      now: float | None = None) -> list[str]:
        """Complete a pending enrolment with a code from the app; the recovery codes, to show once.

        Raises :class:`OtpRejected` for a code that does not match (the enrolment stays pending) and
        :class:`MfaAdminError` ``mfa_not_pending`` when there is nothing to confirm.
        """
        agent = await self.agent(codename)
        record = await self._store.get_mfa(agent.codename)
        if record is None or record.confirmed:
            raise MfaAdminError("no enrolment is waiting for a code: start one first", "mfa_not_pending")
        code = code.strip().replace(" ", "")
        if not is_totp_code(code):
            raise OtpRejected("a code is six digits")
        secret = self._factor.box.open(record.secret_box, agent.codename)
        step = matching_step(secret, code, time.time() if now is None else now)
        if step is None:
            raise OtpRejected("wrong code")
        recovery = new_recovery_codes()
        # The step is recorded as used: the code just typed cannot also log in.
        if not await self._store.confirm_mfa(agent.codename, record.secret_box, step,
                                             [hash_recovery_code(c) for c in recovery]):
            raise MfaAdminError("the enrolment changed meanwhile (started again, or reset): start again",
                                "mfa_not_pending")
        self._record(actor, "mfa_confirm", agent)
        return recovery

    async def reset(self, codename: str, *, actor: Actor = CLI_ACTOR) -> bool:
        """Remove the agent's second factor (confirmed or pending) and recovery codes, and end its
        sessions everywhere; False (and nothing ended) if it had none."""
        agent = await self.agent(codename)
        removed = await self._store.reset_mfa(agent.codename)
        if removed:
            self._record(actor, "mfa_reset", agent)
            await self._sessions.revoke(agent.codename, "revoked")
        return removed

    def _record(self, actor: Actor, action: str, agent: Agent) -> None:
        self._audit.record("admin_action", actor=actor.name, interface=actor.interface, action=action,
                           target=agent.codename)


__all__ = ["MfaAdmin", "MfaAdminError", "MfaStatus"]
