"""One exception per family of contract error codes, each carrying its code; and how a log names an error."""

from __future__ import annotations


class HQError(Exception):
    """An error the outside world sees as ``{"code", "message"}``."""

    code = "internal"

    def __init__(self, message: str, code: str | None = None, retry_after: int = 0) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        #: Seconds the client should wait before trying again (0: no advice); HTTP sends ``Retry-After``.
        self.retry_after = retry_after

    @property
    def message(self) -> str:
        return str(self)


class AuthError(HQError):
    """Who-is-this failed: ``token_missing``, ``token_invalid``, ``token_expired``,
    ``token_revoked``, ``token_reused`` or ``agent_disabled``."""

    code = "token_invalid"


class EventError(HQError):
    """A Socket.IO event was refused: ``bad_request``, ``forbidden``, ``not_found``,
    ``rate_limited``, ``payload_too_large`` or ``internal``."""

    code = "bad_request"


class UnavailableError(HQError):
    """A backend HQ needs (the database, Redis) is down or not answering in time: ``unavailable``.

    Transient by nature: the client should retry later. HTTP answers it with 503, a Socket.IO ack
    with ``{"ok": false, "error": {"code": "unavailable"}}``. Never a reason to end a live socket.
    """

    code = "unavailable"


class LoginError(HQError):
    """A login (or a password asked again) was refused: ``invalid_credentials``, ``mfa_required``,
    ``invalid_otp``, ``agent_disabled`` or ``too_many_attempts``."""

    code = "invalid_credentials"


class RequestError(HQError):
    """A request refused for what it asks or how it asks it: ``bad_request``, ``forbidden``,
    ``not_found``, ``agent_exists``, ``mfa_already_enrolled``, ``mfa_not_pending``, ``invalid_otp``,
    ``payload_too_large``, ``unsupported_media_type``, ``too_many_attempts`` or ``origin_not_allowed``
    (the HTTP status of each: :mod:`hq.http.boundary`)."""

    code = "bad_request"


def describe(error: BaseException) -> str:
    """An error in one line, for a log: its type and the first line of its message, never a traceback.

    A timeout has no message of its own, so it is named by its type alone.
    """
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
