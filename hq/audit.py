"""Structured audit events: one JSON line each, never a token or a password.

Every field is checked here, whoever records it: codes, reasons, transports and scopes must come
from a fixed vocabulary (anything else is written as ``other``), codenames must be valid stored
spellings, addresses must be IP addresses, so no text a client sent can become an audit field.
The two descriptive fields a client supplies (``user_agent``, ``origin``) are reduced to a fixed
alphabet (no quotes, braces or line breaks), clipped, and anything in them shaped like a token is
redacted, so a token pasted there never lands.
HTTP requests bind their client address, ``transport: "http"`` and user agent once (see
:func:`audit_context`), so every event recorded while handling them carries those fields.
"""

from __future__ import annotations

import contextvars
import ipaddress
import json
import logging
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping

from aiohttp import web

from .addresses import AddressResolver
from .config import is_valid_codename
from .vocab import KEY_IDENTITY_PREFIX

AUDIT_EVENTS = (
    "login_succeeded", "login_failed", "connection_accepted", "connection_refused", "connection_ended",
    "session_revoked", "token_refreshed", "refresh_refused",
    # A change to an agent or a session by a director (API, console) or the operator (CLI): who
    # (``actor``, ``interface``) did what (``action``) to whom (``target``, and ``role`` / ``sid``).
    "admin_action",
)
_MAX_FIELD = 256
_FREE_TEXT = frozenset({"user_agent", "origin"})
_UNSAFE = re.compile(r"[^A-Za-z0-9 ._/;:()+,@*=\[\]-]")
OTHER = "other"
#: The values each vocabulary field may take.
VOCABULARY: dict[str, frozenset[str]] = {
    "code": frozenset({"invalid_credentials", "agent_disabled", "too_many_attempts", "forbidden", "token_missing",
                       "token_invalid", "token_expired", "token_revoked", "token_reused", "origin_not_allowed",
                       "mfa_required", "invalid_otp", "mfa_enrollment_required", "unavailable", "bad_request"}),
    "reason": frozenset({"token_expired", "logged_out", "revoked", "agent_disabled", "password_changed",
                         "role_changed", "client disconnect", "server disconnect", "ping timeout",
                         "transport close", "transport error", "disconnected"}),
    # Socket.IO's websocket and polling, and the plain WebSocket endpoint (``/ws``, ``/missions``).
    "transport": frozenset({"http", "websocket", "polling", "plain_websocket", "unknown"}),
    "scope": frozenset({"session", "agent"}),
    "interface": frozenset({"admin_ui", "console", "api", "cli", "startup"}),
    "action": frozenset({"add", "enable", "disable", "role", "passwd", "end_session",
                         "mfa_enroll", "mfa_confirm", "mfa_reset", "key_add", "key_revoke"}),
    # How a login was completed: the password alone, or with a TOTP code or a recovery code.
    "factor": frozenset({"password", "totp", "recovery_code"}),
}
#: Fields that name an agent (or the CLI, ``cli``, or start-up, ``hq``): valid codenames only, or a
#: service key's identity ``key:NAME`` with a valid name.
_AGENT_FIELDS = frozenset({"codename", "actor", "target"})
_SESSION_ID = re.compile(r"[0-9a-f]{32}")
# A JWT (three base64url parts) or any long opaque base64url run, like a refresh token.
_TOKEN_SHAPED = re.compile(r"[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*|[A-Za-z0-9_+/=-]{32,}")

Listener = Callable[[str, dict[str, Any]], None]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Fields describing the request being handled; explicit fields given to ``record`` win.
_request_fields: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar("hq_audit_request",
                                                                                      default={})


def audit_context(addresses: AddressResolver) -> Callable[..., Awaitable[web.StreamResponse]]:
    """aiohttp middleware binding the client address, transport and user agent to audit events."""
    @web.middleware
    async def bind(request: web.Request, handler: Handler) -> web.StreamResponse:
        token = _request_fields.set({"address": addresses.client_address(request), "transport": "http",
                                     "user_agent": request.headers.get("User-Agent", "")})
        try:
            return await handler(request)
        finally:
            _request_fields.reset(token)
    return bind


class AuditLog:
    """Writes audit events as JSON lines to a file or stderr and tells listeners (metrics)."""

    def __init__(self, destination: str = "-", base_dir: Path | None = None) -> None:
        self._logger = logging.getLogger(f"hq.audit.{id(self)}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        if destination == "-":
            handler: logging.Handler = logging.StreamHandler(sys.stderr)
        else:
            path = Path(destination)
            if base_dir is not None and not path.is_absolute():
                path = base_dir / path
            path.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._handler = handler
        self._logger.addHandler(handler)
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(event, fields)`` for every event (used by metrics)."""
        self._listeners.append(listener)

    def record(self, event: str, **fields: Any) -> None:
        """Write one audit line."""
        assert event in AUDIT_EVENTS, event
        line = {"ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "event": event}
        fields = {**_request_fields.get(), **{k: v for k, v in fields.items() if v is not None}}
        line.update({k: _checked(k, v) for k, v in fields.items()})
        self._logger.info(json.dumps(line, ensure_ascii=False))
        for listener in self._listeners:
            listener(event, fields)

    def close(self) -> None:
        """Flush and release the destination."""
        self._logger.removeHandler(self._handler)
        self._handler.close()


def _checked(key: str, value: Any) -> Any:
    """``value`` as the audit log may show it under ``key``."""
    if isinstance(value, (bool, int, float)):
        return value
    if not isinstance(value, str):
        return OTHER
    if key in VOCABULARY:
        return value if value in VOCABULARY[key] else OTHER
    if key in _AGENT_FIELDS:
        return value if value == "<unknown>" or _is_identity(value) else "<unknown>"
    if key == "role":  # clearance levels are configured names; anything else is not one
        return value if is_valid_codename(value) else OTHER
    if key == "sid":
        return value if _SESSION_ID.fullmatch(value) else OTHER
    if key == "address":
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            return "unknown"
    if key in _FREE_TEXT:
        return _clip(_UNSAFE.sub("?", _scrub(value)))
    return OTHER


def _is_identity(value: str) -> bool:
    """Whether ``value`` is a codename or a service key's ``key:NAME``."""
    return is_valid_codename(value.removeprefix(KEY_IDENTITY_PREFIX))


def clip_free_text(value: str) -> str:
    """Client-supplied text (a user agent) as HQ may store or show it: fixed alphabet, token-shaped
    runs redacted, clipped to 256 characters, exactly as the audit log writes it."""
    return _clip(_UNSAFE.sub("?", _scrub(value)))


def _scrub(value: Any) -> Any:
    return _TOKEN_SHAPED.sub("[redacted]", value) if isinstance(value, str) else value


def _clip(value: Any) -> Any:
    if isinstance(value, str) and len(value) > _MAX_FIELD:
        return value[:_MAX_FIELD] + "…"
    return value
