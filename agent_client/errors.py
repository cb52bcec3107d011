"""Typed exceptions for the field-agent client, each carrying the contract's error ``code``.

Every refusal HQ can answer (HTTP error bodies, Socket.IO acks, connect refusals, ``session_ended``)
becomes one of these classes, so a caller can ``except Forbidden`` or look at ``exc.code``.
``terminal`` tells whether the client can recover on its own (reconnect, refresh) or must stop.
"""

from __future__ import annotations

from typing import Any


class AgentClientError(Exception):
    """Base class: ``code`` is the contract's error code, ``message`` HQ's (or the client's) words."""

    code: str = "error"
    #: True when retrying cannot help: the client stops and raises this to its caller.
    terminal: bool = False

    def __init__(self, message: str = "", code: str | None = None) -> None:
        super().__init__(message or self.__class__.__name__)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        """The human-readable explanation."""
        return str(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


# -- login ---------------------------------------------------------------------------------------
class LoginFailed(AgentClientError):
    """Unknown codename or wrong password (``invalid_credentials``)."""

    code = "invalid_credentials"
    terminal = True


class AgentDisabled(AgentClientError):
    """The agent has been disabled by an operator (``agent_disabled``)."""

    code = "agent_disabled"
    terminal = True


class TooManyAttempts(AgentClientError):
    """Failed logins are limited (``too_many_attempts``); ``retry_after`` is in seconds."""

    code = "too_many_attempts"
    terminal = True

    def __init__(self, message: str = "", code: str | None = None, retry_after: int = 0) -> None:
        super().__init__(message, code)
        self.retry_after = retry_after


class MfaRequired(AgentClientError):
    """The password was right and the agent has a second factor: log in again with ``otp=`` the
    code its authenticator app shows, or a recovery code (``mfa_required``)."""

    code = "mfa_required"
    terminal = True


class InvalidOtp(AgentClientError):
    """The code was wrong, already used in its 30-second step, or a spent recovery code
    (``invalid_otp``); counted by HQ's login limits like a wrong password."""

    code = "invalid_otp"
    terminal = True


class MfaEnrollmentRequired(AgentClientError):
    """The agent's role must use a second factor and it has none yet (``mfa_enrollment_required``):
    enrol one first (the browser console, or ``python -m hq agents mfa enroll``); the client cannot."""

    code = "mfa_enrollment_required"
    terminal = True


class NotLoggedIn(AgentClientError):
    """A call that needs a session was made before :meth:`AgentClient.login`."""

    code = "not_logged_in"
    terminal = True


# -- tokens and sessions ---------------------------------------------------------------------------
class TokenRejected(AgentClientError):
    """HQ refused a token: ``token_missing``, ``token_invalid``, ``token_expired`` or ``token_revoked``.

    Raised when refreshing fails (the session cannot be continued without a new login).
    """

    code = "token_invalid"
    terminal = True


class TokenReused(TokenRejected):
    """A spent refresh token came back (``token_reused``): HQ has revoked the whole session."""

    code = "token_reused"


class ConnectionRefused(AgentClientError):
    """HQ refused the Socket.IO connection (``connect_error``); ``code`` is HQ's refusal code."""

    code = "token_invalid"
    terminal = True


class SessionEnded(AgentClientError):
    """HQ ended the session (``session_ended``); ``reason`` is ``logged_out``, ``revoked``,
    ``agent_disabled`` or ``token_expired``."""

    code = "session_ended"
    terminal = True

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or f"HQ ended the session: {reason}")
        self.reason = reason


# -- event refusals --------------------------------------------------------------------------------
class BadRequest(AgentClientError):
    """HQ could not accept the request's shape (``bad_request``)."""

    code = "bad_request"
    terminal = True


class Forbidden(AgentClientError):
    """The agent's clearance does not allow this (``forbidden``)."""

    code = "forbidden"
    terminal = True


class NotFound(AgentClientError):
    """No such channel or resource (``not_found``)."""

    code = "not_found"
    terminal = True


class RateLimited(AgentClientError):
    """Too many events on this socket (``rate_limited``); the event was not processed."""

    code = "rate_limited"


class PayloadTooLarge(AgentClientError):
    """The text or body is over HQ's limit (``payload_too_large``)."""

    code = "payload_too_large"
    terminal = True


class UnsupportedMediaType(AgentClientError):
    """HQ wants JSON (``unsupported_media_type``); a client bug if it ever happens."""

    code = "unsupported_media_type"
    terminal = True


class ServerError(AgentClientError):
    """HQ failed on its side (``internal`` or an unexpected HTTP status); worth retrying later."""

    code = "internal"


# -- transport and client state --------------------------------------------------------------------
class Unavailable(AgentClientError):
    """HQ could not be reached (connection refused, reset, timeout), or answered ``unavailable``
    (a backend it needs is down); worth retrying, on another node too."""

    code = "unavailable"


class CertificateError(Unavailable):
    """HQ's TLS certificate did not verify against the trusted CAs (``certificate_invalid``)."""

    code = "certificate_invalid"
    terminal = True


class ConnectionLost(AgentClientError):
    """The connection dropped while a call waited for HQ's answer; HQ may or may not have acted."""

    code = "connection_lost"


class NotConnected(AgentClientError):
    """A socket call was made before :meth:`AgentClient.connect`."""

    code = "not_connected"
    terminal = True


class ClientClosed(AgentClientError):
    """The client was closed (``close()``, ``logout()``) before or during the call."""

    code = "closed"
    terminal = True


_BY_CODE: dict[str, type[AgentClientError]] = {
    cls.code: cls for cls in (
        LoginFailed, AgentDisabled, TooManyAttempts, TokenReused, BadRequest, Forbidden, NotFound,
        RateLimited, PayloadTooLarge, UnsupportedMediaType, ServerError, Unavailable, MfaRequired, InvalidOtp,
        MfaEnrollmentRequired)
}
_TOKEN_CODES = frozenset({"token_missing", "token_invalid", "token_expired", "token_revoked"})


def error_for(code: Any, message: Any = "", default: type[AgentClientError] = ServerError) -> AgentClientError:
    """The typed exception for a contract error code (``default`` for codes without their own class)."""
    code = code if isinstance(code, str) and code else "internal"
    message = message if isinstance(message, str) else ""
    cls = _BY_CODE.get(code)
    if cls is None and code in _TOKEN_CODES and default is ServerError:
        cls = TokenRejected
    return (cls or default)(message or code, code)


def error_from_body(body: Any, status: int, default: type[AgentClientError] = ServerError) -> AgentClientError:
    """The typed exception for an HTTP error response body ``{"error": {"code", "message"}}``."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return ServerError(f"HQ answered HTTP {status}", "internal")
    return error_for(error.get("code"), error.get("message"), default)
