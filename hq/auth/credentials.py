"""The one credential check behind every door: a password, a second factor, the login limits.

Every way in asks it: ``POST /api/auth/login`` and the password asked again before enrolling a
second factor (:mod:`hq.auth.sessions`), and the Socket.IO Admin UI (:mod:`hq.ops.admin_ui`). It is
built once per process with the process's one :class:`~hq.auth.limits.LoginLimiter`, so a guesser
has one failure budget per codename and per address, whichever door it knocks on.

The order is the contract's, and the work done never tells a known codename from an unknown one:

1. The agent and its second-factor record are read for every well-formed codename, known or not.
2. The login limits: while either count is at its limit, ``too_many_attempts`` (even with the right
   password), nothing else checked.
3. The password, with bcrypt (the dummy hash for an unknown codename); a wrong one, or one longer
   than :data:`~hq.auth.passwords.MAX_PASSWORD_LENGTH`, is ``invalid_credentials`` and counts as a
   failure. A code sent with it is checked against a decoy, as much work as checking it would be.
4. Only after a correct password: ``agent_disabled``; then, for an enrolled agent, the code
   (``mfa_required`` without one, ``invalid_otp`` for a wrong or replayed one, counted like a wrong
   password).
5. The codename's failures are cleared only now: clearing them on a correct password alone would
   let a code guesser reset the count between guesses.

Each refusal is audited as ``login_failed`` with its code (and whatever fields the door adds), only
ever with a stored codename (``<unknown>`` otherwise: a password typed into the name field is never
written). The door writes ``login_succeeded`` itself, once it has let the agent in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..audit import AuditLog
from ..config import is_valid_codename
from ..errors import LoginError
from ..store import Agent, Store
from .limits import LoginLimiter
from .mfa import DIGITS, OtpRejected, SecondFactor
from .passwords import MAX_PASSWORD_LENGTH, PasswordHasher

#: How the audit log shows a codename that is not stored.
UNKNOWN = "<unknown>"


@dataclass(frozen=True)
class Verified:
    """Credentials that passed: whose they are and how they were proved."""

    agent: Agent
    #: ``password`` (no second factor enrolled), ``totp`` or ``recovery_code``.
    factor: str = "password"
    #: After a recovery code: how many the agent has left.
    recovery_codes_left: int | None = None
    #: The agent's role must log in with a second factor (``auth.mfa_required``) and it has none yet.
    must_enrol: bool = False


class CredentialCheck:
    """Checks a codename, a password and a second factor, throttled and audited, for every door."""

    def __init__(self, store: Store, hasher: PasswordHasher, second_factor: SecondFactor, limiter: LoginLimiter,
                 audit: AuditLog) -> None:
        self._store = store
        self._hasher = hasher
        self._mfa = second_factor
        self._limiter = limiter
        self._audit = audit

    @property
    def second_factor(self) -> SecondFactor:
        """The second factor this check asks for."""
        return self._mfa

    async def check(self, codename: str, password: str, address: str, otp: str | None = None, *,
                    code_in_password: bool = False, audit: Mapping[str, Any] | None = None) -> Verified:
        """Check a login attempt; :class:`LoginError` with the contract's code if it fails.

        With ``code_in_password`` (a door with one field), an enrolled agent's code is the last
        :data:`~hq.auth.mfa.DIGITS` characters of ``password``. ``audit`` holds the fields the door
        adds to each ``login_failed`` line.
        """
        fields = dict(audit or {})
        valid = is_valid_codename(codename)
        agent = await self._store.get_agent(codename) if valid else None
        # Read for every well-formed codename, known or not: the work done never tells them apart.
        factor = await self._mfa.record(codename) if valid else None
        enrolled = factor is not None and factor.confirmed
        # Spent against a decoy on a wrong password; with one field, whatever stands where a code would.
        decoy = otp
        if code_in_password:
            decoy = password[-DIGITS:]
            if enrolled:
                password, otp = password[:-DIGITS], decoy
        loggable = agent.codename if agent is not None else UNKNOWN
        await self._refuse_if_throttled(codename, address, loggable, fields)
        ok = await self._hasher.verify(password, agent.password_hash if agent else None)
        if not ok or agent is None or len(password) > MAX_PASSWORD_LENGTH:
            if decoy is not None:  # as much work as checking the code would have been
                self._mfa.spend_like_a_check(decoy)
            await self._limiter.record_failure(codename, address)
            raise self._refused("unknown codename or wrong password", "invalid_credentials", loggable, address,
                                fields)
        if not agent.enabled:
            raise self._refused("this agent is disabled", "agent_disabled", agent.codename, address, fields)
        verified = Verified(agent, must_enrol=not enrolled and self._mfa.required_for(agent))
        if factor is not None and enrolled:
            if otp is None:
                raise self._refused("this agent logs in with a second factor: send the code its authenticator "
                                    "app shows (or a recovery code) as \"otp\"", "mfa_required", agent.codename,
                                    address, fields)
            try:
                used = await self._mfa.check(agent, factor, otp)
            except OtpRejected:
                await self._limiter.record_failure(codename, address)
                raise self._refused("wrong code, or one already used: wait for the next code and try again",
                                    "invalid_otp", agent.codename, address, fields) from None
            left = factor.recovery_codes_left - 1 if used == "recovery_code" else None
            verified = Verified(agent, used, left)
        await self._limiter.record_success(codename)
        return verified

    async def check_password(self, agent: Agent, password: str, address: str) -> None:
        """Ask a known (logged-in) agent's password again before a sensitive change, such as
        enrolling a second factor: throttled and counted like a login; :class:`LoginError` if wrong.

        No code is asked, and a correct password does not clear the agent's failures: that is
        left to a complete login.
        """
        await self._refuse_if_throttled(agent.codename, address, agent.codename, {})
        ok = await self._hasher.verify(password, agent.password_hash)
        if not ok or len(password) > MAX_PASSWORD_LENGTH:
            await self._limiter.record_failure(agent.codename, address)
            raise self._refused("wrong password", "invalid_credentials", agent.codename, address, {})

    async def _refuse_if_throttled(self, codename: str, address: str, loggable: str, fields: dict[str, Any]) -> None:
        retry_after = await self._limiter.retry_after(codename, address)
        if retry_after:
            raise self._refused("too many failed attempts; try again later", "too_many_attempts", loggable, address,
                                fields, retry_after)

    def _refused(self, message: str, code: str, loggable: str, address: str, fields: dict[str, Any],
                 retry_after: int = 0) -> LoginError:
        """Audit a refusal; the error to raise."""
        self._audit.record("login_failed", codename=loggable, address=address, code=code, **fields)
        return LoginError(message, code, retry_after)
