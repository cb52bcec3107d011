"""The Socket.IO Admin UI (python-socketio's ``instrument()``), for directors only, off by default.

Enabled with ``[admin] enabled = true``. The UI (https://admin.socket.io, or a self-hosted copy
of ``@socket.io/admin-ui``) connects to the ``/admin`` namespace with ``{"username", "password"}``:
the password is bcrypt-checked against the store like a login (same dummy work for unknown
codenames, the same per-codename and per-address failure limits, audited as ``login_succeeded`` /
``login_failed`` with ``interface: "admin_ui"``), and only an enabled agent of the highest
clearance level (``director`` by default) gets in. The UI has no field for a second factor: an agent
with one types the code from its app right after its password (``password123456``), and one whose
role must have one (``[auth] mfa_required``) but has none is refused until it enrols.

It runs in python-socketio's ``production`` mode: server statistics, socket counts per namespace
and packet, byte and connection rates. The ``development`` mode is deliberately not used: it
forwards every socket's handshake headers and query (the ``jwt`` cookie, ``Authorization``, a
``token`` parameter) and every event payload (``reauth`` carries a token) to the UI.
``[admin] read_only = false`` adds the UI's actions (emit, join, leave, disconnect).
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any

import socketio

from ..addresses import AddressResolver
from ..audit import AuditLog
from ..config import Settings, is_valid_codename
from ..auth.limits import LoginLimiter
from ..auth.mfa import DIGITS, OtpRejected, SecondFactor
from ..auth.passwords import MAX_PASSWORD_LENGTH, PasswordHasher
from ..store import Store

NAMESPACE = "/admin"
INTERFACE = "admin_ui"
UNKNOWN = "<unknown>"


@dataclass(frozen=True)
class _Caller:
    address: str
    transport: str
    user_agent: str


# python-socketio hands the auth callable only the credentials; the connect handler that wraps it
# runs in the same task, so it passes who is calling through this context variable.
_caller: contextvars.ContextVar[_Caller] = contextvars.ContextVar("hq_admin_caller")


class AdminUI:
    """Installs the Admin UI on a Socket.IO server behind a director's password."""

    def __init__(self, settings: Settings, sio: socketio.AsyncServer, store: Store, hasher: PasswordHasher,
                 audit: AuditLog, addresses: AddressResolver, limiter: LoginLimiter,
                 second_factor: SecondFactor | None = None) -> None:
        self._factor = second_factor
        self._settings = settings
        self._sio = sio
        self._store = store
        self._hasher = hasher
        self._audit = audit
        self._addresses = addresses
        self._throttle = limiter
        self._role = settings.clearance.levels[-1]
        self._instrumented: Any = None

    @property
    def enabled(self) -> bool:
        """Whether ``[admin] enabled`` asks for the Admin UI."""
        return self._settings.admin.enabled

    def install(self) -> None:
        """Instrument the server (only when enabled); never without authentication."""
        if not self.enabled or self._instrumented is not None:
            return
        self._instrumented = self._sio.instrument(auth=self.authenticate, mode="production",
                                                  read_only=self._settings.admin.read_only,
                                                  namespace=NAMESPACE)
        # Wrap the instrumented connect handler to learn the caller's address for limits and audit.
        self._sio.on("connect", self._connect, namespace=NAMESPACE)
        if not self._settings.admin.read_only:
            # python-socketio registers the UI's actions only in development mode; offer them here.
            actions = {"emit": "admin_emit", "join": "admin_enter_room", "leave": "admin_leave_room",
                       "_disconnect": "admin_disconnect"}
            for event, method in actions.items():
                self._sio.on(event, getattr(self._instrumented, method), namespace=NAMESPACE)

    async def shutdown(self) -> None:
        """Stop the statistics task."""
        if self._instrumented is not None:
            await self._instrumented.shutdown()

    async def _connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        request = environ.get("aiohttp.request")
        address = self._addresses.client_address(request) if request is not None else "unknown"
        _caller.set(_Caller(address, self._sio.transport(sid, namespace=NAMESPACE),
                            environ.get("HTTP_USER_AGENT", "")))
        await self._instrumented.admin_connect(sid, environ, auth)

    async def authenticate(self, credentials: Any) -> bool:
        """True only for an enabled top-clearance agent with the right password (and not throttled)."""
        caller = _caller.get(_Caller("unknown", "unknown", ""))
        username = credentials.get("username") if isinstance(credentials, dict) else None
        password = credentials.get("password") if isinstance(credentials, dict) else None
        if not isinstance(username, str) or not isinstance(password, str):
            self._record(False, UNKNOWN, caller, "bad_request")
            return False
        agent = await self._store.get_agent(username) if is_valid_codename(username) else None
        # Only a stored codename is written: a password typed into the name field never is.
        loggable = agent.codename if agent is not None else UNKNOWN
        if await self._throttle.retry_after(username, caller.address):
            self._record(False, loggable, caller, "too_many_attempts")
            return False
        factor = await self._factor.record(username) if self._factor is not None and agent is not None else None
        enrolled = factor is not None and factor.confirmed
        # An enrolled agent's last six characters are the code from its app (the UI has one field).
        password, code = (password[:-DIGITS], password[-DIGITS:]) if enrolled else (password, "")
        ok = await self._hasher.verify(password, agent.password_hash if agent else None)
        if not ok or agent is None or len(password) > MAX_PASSWORD_LENGTH:
            await self._throttle.record_failure(username, caller.address)
            self._record(False, loggable, caller, "invalid_credentials")
            return False
        if not agent.enabled:
            self._record(False, agent.codename, caller, "agent_disabled")
            return False
        if agent.role != self._role:
            self._record(False, agent.codename, caller, "forbidden")
            return False
        if factor is not None and enrolled and self._factor is not None:
            try:
                await self._factor.check(agent, factor, code)
            except OtpRejected:
                await self._throttle.record_failure(username, caller.address)
                self._record(False, agent.codename, caller, "invalid_otp")
                return False
        elif self._factor is not None and self._factor.required_for(agent):
            self._record(False, agent.codename, caller, "mfa_enrollment_required")
            return False
        await self._throttle.record_success(username)
        self._record(True, agent.codename, caller, None)
        return True

    def _record(self, ok: bool, codename: str, caller: _Caller, code: str | None) -> None:
        self._audit.record("login_succeeded" if ok else "login_failed", codename=codename, code=code,
                           address=caller.address, transport=caller.transport, user_agent=caller.user_agent,
                           interface=INTERFACE)

