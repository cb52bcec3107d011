"""The one error boundary of HQ's HTTP routes: a middleware that turns every refusal into the contract's answer.

A route has exactly one way to refuse: it **raises** an :class:`~hq.errors.HQError` (usually a
:class:`~hq.errors.RequestError` with the contract's code, or lets the domain's error rise) and this
middleware answers it. No handler catches an error to build an error response itself; a new route
needs no ``try``/``except``, and a new code needs one row in :data:`STATUSES`.

What the boundary answers, at a glance:

- an :class:`HQError`: its status from :data:`STATUSES` (by family, then code), the body
  ``{"error": {"code", "message"}}``, ``Cache-Control: no-store``, ``Retry-After`` when the error
  advises a wait, and ``WWW-Authenticate: Bearer error=...`` for a token error (RFC 6750);
- a domain exception of the auth and store layers (:data:`DOMAIN_ERRORS`): the ``HQError`` it stands for;
- aiohttp's own HTTP errors (404 no route, 405, 413 past ``client_max_size``...): the same JSON body
  with a code for the status (:data:`AIOHTTP_CODES`), keeping ``Allow`` and ``Retry-After``;
- anything else: 500 ``internal`` and one log line with the traceback (never in the body).

Socket.IO's paths (``/socket.io/``) keep python-engineio's own answers to aiohttp's HTTP errors.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

from aiohttp import web

from ..auth.agents import AgentAdminError, UnknownSessionError
from ..auth.identity import ENROLLMENT_REQUIRED
from ..auth.mfa import OtpRejected
from ..auth.mfa_admin import MfaAdminError
from ..auth.passwords import PasswordPolicyError
from ..auth.service_keys import ServiceKeyAdminError, UnknownServiceKeyError
from ..errors import AuthError, HQError, LoginError, RequestError, UnavailableError
from ..store import AgentExistsError, ServiceKeyExistsError, UnknownAgentError
from .headers import NO_STORE
from .tokens import clear_auth_cookies

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: The one table: the HTTP status of each error, by family and then code (``None``: the family's other codes).
#: A code may differ by family: ``agent_disabled`` is a token error (401) on a token of a disabled agent but 403
#: after a correct password; ``invalid_otp`` is 401 at login and 400 when confirming an enrolment.
STATUSES: dict[type, dict[str | None, int]] = {
    AuthError: {ENROLLMENT_REQUIRED: 403, None: 401},
    LoginError: {"agent_disabled": 403, "too_many_attempts": 429, None: 401},
    RequestError: {"forbidden": 403, "not_found": 404, "agent_exists": 409, "key_exists": 409, "mfa_already_enrolled": 409,
                   "mfa_not_pending": 409, "payload_too_large": 413, "unsupported_media_type": 415,
                   "too_many_attempts": 429, "origin_not_allowed": 400, None: 400},
    UnavailableError: {None: 503},
    HQError: {"not_installed": 503, None: 500},
}

#: The domain's own exceptions (auth and store raise them for the CLI too) as the ``HQError`` each is answered as.
DOMAIN_ERRORS: dict[type, Callable[[Exception], HQError]] = {
    AgentAdminError: lambda exc: RequestError(str(exc), "bad_request"),
    PasswordPolicyError: lambda exc: RequestError(str(exc), "bad_request"),
    AgentExistsError: lambda exc: RequestError(f"an agent named {exc} already exists (codenames ignore case)",
                                               "agent_exists"),
    UnknownAgentError: lambda exc: RequestError(f"no agent named {str(exc)[:64]!r}", "not_found"),
    UnknownSessionError: lambda exc: RequestError("no live session has that id", "not_found"),
    MfaAdminError: lambda exc: RequestError(str(exc), getattr(exc, "code", "bad_request")),
    ServiceKeyAdminError: lambda exc: RequestError(str(exc), "bad_request"),
    ServiceKeyExistsError: lambda exc: RequestError(f"a key named {exc} already exists (names ignore case)",
                                                    "key_exists"),
    UnknownServiceKeyError: lambda exc: RequestError(f"no key named {str(exc)[:64]!r}", "not_found"),
    OtpRejected: lambda exc: RequestError("that code does not match: check the app's clock and type the code "
                                          "it shows now", "invalid_otp"),
}

#: The code of each of aiohttp's own HTTP errors (any other status: ``error``).
AIOHTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}
#: Headers of aiohttp's HTTP errors that still mean something in the JSON answer.
_KEPT_HEADERS = ("allow", "retry-after")

#: How long a client should wait after a backend was found down.
UNAVAILABLE_RETRY_AFTER = 1

_CLEAR_COOKIES = web.RequestKey("clear_cookies_on_token_error", bool)


def clear_cookies_on_token_error(request: web.Request) -> None:
    """Have a token error on this request also expire the token cookies (a refused refresh: the
    session is over, so the browser should stop sending them). A backend that is down does not
    clear them: retrying with the same cookie is right."""
    request[_CLEAR_COOKIES] = True


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """The contract's JSON error body."""
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


def status_of(error: HQError) -> int:
    """The HTTP status :data:`STATUSES` gives ``error``: its nearest family's row for its code."""
    for family in type(error).__mro__:
        statuses = STATUSES.get(family)
        if statuses is not None:
            return statuses.get(error.code, statuses[None])
    return 500  # unreachable: every HQError has HQError in its MRO


def as_hq_error(exc: Exception) -> HQError | None:
    """``exc`` as the ``HQError`` it is answered as, or None for an unexpected exception."""
    if isinstance(exc, HQError):
        return exc
    for family in type(exc).__mro__:
        translate = DOMAIN_ERRORS.get(family)
        if translate is not None:
            return translate(exc)
    return None


def answer(error: HQError) -> web.Response:
    """The contract's answer to ``error``: status, body and headers."""
    headers = dict(NO_STORE)
    if isinstance(error, UnavailableError):
        # The driver's words stay in the server's log: they can name hosts and ports.
        message, retry_after = "HQ cannot reach a backend it needs; try again shortly", UNAVAILABLE_RETRY_AFTER
    else:
        message, retry_after = error.message, error.retry_after
    if retry_after:
        headers["Retry-After"] = str(retry_after)
    if isinstance(error, AuthError):
        headers["WWW-Authenticate"] = f'Bearer error="{_bearer_error(error)}"'
    return error_response(status_of(error), error.code, message, headers)


@web.middleware
async def error_boundary(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one middleware that answers every refusal and failure of every route (see the module's docstring)."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or request.path.startswith("/socket.io"):
            raise
        return error_response(exc.status, AIOHTTP_CODES.get(exc.status, "error"), exc.reason,
                              headers={k: v for k, v in exc.headers.items() if k.lower() in _KEPT_HEADERS})
    except Exception as exc:
        error = as_hq_error(exc)
        if error is None:
            log.exception("unhandled error on %s %s", request.method, request.path)
            return error_response(500, "internal", "internal error")
        response = answer(error)
        if isinstance(error, AuthError) and request.get(_CLEAR_COOKIES):
            clear_auth_cookies(response)
        return response


def _bearer_error(error: AuthError) -> str:
    """The RFC 6750 ``error`` of a token error's ``WWW-Authenticate`` challenge."""
    if error.code == ENROLLMENT_REQUIRED:
        return "insufficient_scope"  # a valid token without the privileges asked for
    return "invalid_request" if error.code == "token_missing" else "invalid_token"
