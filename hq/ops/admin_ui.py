"""The Socket.IO Admin UI (python-socketio's ``instrument()``), for directors only, off by default.

Enabled with ``[admin] enabled = true``. The UI (https://admin.socket.io, or a self-hosted copy
of ``@socket.io/admin-ui``) connects to the ``/admin`` namespace with ``{"username", "password"}``,
checked by the same :class:`~hq.auth.credentials.CredentialCheck` as ``POST /api/auth/login``: the
same bcrypt and dummy work, the same second factor, and the same login limiter, so a guess here
spends the same per-codename and per-address failure budget as a guess there (audited as
``login_succeeded`` / ``login_failed`` with ``interface: "admin_ui"``). Then the UI's own rules:
only an agent of the highest clearance level (``director`` by default) gets in (``forbidden``),
and one whose role must have a second factor (``[auth] mfa_required``) but has none is refused
until it enrols (``mfa_enrollment_required``). The UI has no field for a second factor: an agent
with one types the code from its app right after its password (``password123456``).

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
from ..auth.credentials import UNKNOWN, CredentialCheck, Verified
from ..config import Settings
from ..errors import LoginError

NAMESPACE = "/admin"
INTERFACE = "admin_ui"


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

    def __init__(self, settings: Settings, sio: socketio.AsyncServer, credentials: CredentialCheck,
                 audit: AuditLog, addresses: AddressResolver) -> None:
        self._settings = settings
        self._sio = sio
        self._credentials = credentials
        self._audit = audit
        self._addresses = addresses
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

    async def _connect(self, socket_id: str, environ: dict[str, Any], auth: Any = None) -> None:
        request = environ.get("aiohttp.request")
        address = self._addresses.client_address(request) if request is not None else "unknown"
        _caller.set(_Caller(address, self._sio.transport(socket_id, namespace=NAMESPACE),
                            environ.get("HTTP_USER_AGENT", "")))
        await self._instrumented.admin_connect(socket_id, environ, auth)

    async def authenticate(self, credentials: Any) -> bool:
        """True only for an enabled top-clearance agent whose credentials pass (and not throttled)."""
        caller = _caller.get(_Caller("unknown", "unknown", ""))
        username = credentials.get("username") if isinstance(credentials, dict) else None
        password = credentials.get("password") if isinstance(credentials, dict) else None
        if not isinstance(username, str) or not isinstance(password, str):
            self._record(caller, UNKNOWN, "bad_request")
            return False
        try:
            # One field: an enrolled agent's last six characters are the code from its app.
            verified = await self._credentials.check(username, password, caller.address, code_in_password=True,
                                                     audit=self._fields(caller))
        except LoginError:  # audited by the check
            return False
        if verified.agent.role != self._role:
            self._record(caller, verified.agent.codename, "forbidden")
            return False
        if verified.must_enrol:
            self._record(caller, verified.agent.codename, "mfa_enrollment_required")
            return False
        self._record(caller, verified.agent.codename, None, verified)
        return True

    def _record(self, caller: _Caller, codename: str, code: str | None, verified: Verified | None = None) -> None:
        """``login_failed`` with ``code``, or ``login_succeeded`` (``code`` None) with the factor used."""
        self._audit.record("login_succeeded" if code is None else "login_failed", codename=codename, code=code,
                           address=caller.address, factor=verified.factor if verified is not None else None,
                           **self._fields(caller))

    @staticmethod
    def _fields(caller: _Caller) -> dict[str, str]:
        """What this door adds to each audit line beside the codename, address and code."""
        return {"transport": caller.transport, "user_agent": caller.user_agent, "interface": INTERFACE}
