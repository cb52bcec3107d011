"""The OpenAPI 3.1 description of every HTTP endpoint HQ serves, at ``GET /api/openapi.json``.

The document is built from the settings (the clearance levels a ``role`` may take) once per app.
Every response is described, errors included: each error response lists, as an ``enum``, exactly
the codes that route answers with that status, so clients can switch on them and the tests can
check that each one is reachable (tests/test_openapi.py drives every one of them, checks that every
route of :func:`hq.app.create_app` is described, and runs schemathesis against a real HQ).

Adding a route: write a function returning its path items (see :func:`_directors_paths`), built
with :func:`operation`, :func:`ok`, :func:`errors` and the :data:`AUTH_CODES` families, and add it
to :func:`build_document`'s list. tests/test_openapi.py then fails until each documented error code
has a driver there that provokes it.
"""

from __future__ import annotations

from typing import Any, Iterable


from ..config import Settings
from .console import STATIC_FILES
from .documents import ServedDocument

JSON = "application/json"
Schema = dict[str, Any]

#: The 401 codes of every route that identifies its caller by an access token.
AUTH_CODES = ("token_missing", "token_invalid", "token_expired", "token_revoked", "agent_disabled")
#: The 403 of every route that does not take the enrolment-only token (a login of an agent whose role
#: must use a second factor and has none: hq/auth/sessions.py).
ENROLL_ONLY = ("mfa_enrollment_required",)
#: Readers authenticate with a Bearer token or the ``jwt`` cookie.
READ_SECURITY = [{"bearer": []}, {"cookie": []}]
#: Changers with a Bearer token, or with the cookie only together with ``X-HQ-Console: 1``.
CHANGE_SECURITY = [{"bearer": []}, {"cookie": [], "console": []}]

_STATUS_TEXT = {400: "Bad request", 401: "Not authenticated", 403: "Forbidden", 404: "Not found",
                409: "Conflict", 413: "Payload too large", 415: "Unsupported media type",
                429: "Too many requests", 503: "A backend HQ needs is down; retry later"}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again.",
                                "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
_WWW_AUTHENTICATE = {"WWW-Authenticate": {"description": "RFC 6750 Bearer challenge.", "schema": {"type": "string"}}}
_PARTIAL = {"X-HQ-Sockets": {
    "description": "`this-node-only` when the cluster's sockets could not be read from Redis: the "
                   "`sockets` shown are this node's only. Absent otherwise.",
    "schema": {"type": "string", "enum": ["this-node-only"]}}}
_SET_COOKIE = {"Set-Cookie": {"description": "`jwt` (Path=/) and `hq_refresh` (Path=/api/auth): HttpOnly, "
                                             "Secure, SameSite=Strict, Max-Age the token's lifetime.",
                              "schema": {"type": "string"}}}


# building blocks --------------------------------------------------------------------------------
def error_schema(codes: Iterable[str]) -> Schema:
    """The contract's error body with ``code`` limited to ``codes``."""
    return {"type": "object", "required": ["error"], "additionalProperties": False, "properties": {
        "error": {"type": "object", "required": ["code", "message"], "additionalProperties": False,
                  "properties": {"code": {"type": "string", "enum": sorted(set(codes))},
                                 "message": {"type": "string"}}}}}


def errors(**by_status: Iterable[str]) -> dict[str, Any]:
    """Error responses: ``errors(s401=AUTH_CODES, s404=["not_found"])`` (keys are ``s`` + status)."""
    responses = {}
    for key, codes in by_status.items():
        status = int(key.removeprefix("s"))
        headers: dict[str, Any] = {}
        if status in (429, 503):
            headers.update(_RETRY_AFTER)
        if status == 401:
            headers.update(_WWW_AUTHENTICATE)
        response: dict[str, Any] = {"description": _STATUS_TEXT[status],
                                    "content": {JSON: {"schema": error_schema(codes)}}}
        if headers:
            response["headers"] = headers
        responses[str(status)] = response
    return responses


def ok(description: str, schema: Schema | None = None, status: int = 200, media_type: str = JSON,
       headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """A success response (no body when ``schema`` is None)."""
    response: dict[str, Any] = {"description": description}
    if schema is not None:
        response["content"] = {media_type: {"schema": schema}}
    if headers:
        response["headers"] = headers
    return {str(status): response}


def json_body(schema: Schema, required: bool = True, description: str | None = None) -> dict[str, Any]:
    """A JSON request body."""
    body: dict[str, Any] = {"required": required, "content": {JSON: {"schema": schema}}}
    if description:
        body["description"] = description
    return body


def operation(summary: str, tag: str, responses: dict[str, Any], *, security: list[Any] | None = None,
              body: dict[str, Any] | None = None, parameters: list[dict[str, Any]] | None = None,
              description: str | None = None) -> dict[str, Any]:
    """One operation object; ``security`` None means no credentials are needed."""
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses,
                          "security": security if security is not None else []}
    if description:
        op["description"] = description
    if body is not None:
        op["requestBody"] = body
    if parameters:
        op["parameters"] = parameters
    return op


def path_parameter(name: str, description: str, schema: Schema | None = None) -> dict[str, Any]:
    """A required path parameter."""
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": schema or {"type": "string"}}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: dict[str, Schema], required: Iterable[str] | None = None, closed: bool = True,
            **extra: Any) -> Schema:
    schema: Schema = {"type": "object", "properties": properties,
                      "required": list(properties if required is None else required)}
    if closed:
        schema["additionalProperties"] = False
    schema.update(extra)
    return schema


# schemas ----------------------------------------------------------------------------------------
def _components(settings: Settings) -> dict[str, Any]:
    levels = list(settings.clearance.levels)
    codename = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[A-Za-z0-9_.-]+$"}
    timestamp = {"type": "string", "description": "ISO 8601, UTC"}
    role = {"type": "string", "description": f"A clearance level, lowest first: {', '.join(levels)}."}
    new_password = {"type": "string", "minLength": 12, "maxLength": 1024}
    agent = _object({
        "codename": {"type": "string", "description": "As stored (codenames are unique regardless of case)."},
        "role": role, "enabled": {"type": "boolean"}, "created": timestamp,
        "last_login": {"type": ["string", "null"], "description": "When its newest login session was opened; "
                                                                  "null if it never logged in."},
        "sockets": {"type": "integer", "minimum": 0, "description": "Live sockets on every node."},
        "mfa": {"type": "boolean", "description": "Whether it has a confirmed second factor (TOTP); a begun, "
                                                  "unconfirmed enrolment is not one. Reset with "
                                                  "DELETE /api/agents/{codename}/mfa."}})
    agent_with_password = {**agent, "properties": {**agent["properties"], "password": {
        "type": "string", "description": "Only when HQ generated it: shown this once, never again."}}}
    socket = _object({
        "node": {"type": "string", "description": "The HQ node (process) holding it: host:pid:random."},
        "address": {"type": "string"}, "transport": {"type": "string", "enum": ["websocket", "polling", "plain_websocket"]},
        "user_agent": {"type": "string", "maxLength": 257}, "since": timestamp,
        "exp": {"type": ["integer", "null"], "description": "Expiry (Unix time) of the token it is authenticated "
                                                            "with; null for a service key (keys do not expire)."}})
    session = _object({"sid": {"type": "string", "pattern": "^[0-9a-f]{32}$"}, "codename": {"type": "string"},
                       "created": timestamp, "sockets": {"type": "array", "items": _ref("Socket")}})
    token_pair = _object({
        "access_token": {"type": "string"}, "token_type": {"const": "Bearer"},
        "expires_in": {"type": "integer", "description": "Seconds"}, "refresh_token": {"type": "string"},
        "agent": _object({"codename": {"type": "string"}, "role": role})})
    enrollment_login = _object({
        "access_token": {"type": "string", "description": "Good for GET /api/auth/mfa, POST /api/auth/mfa/enroll "
                                                         "and /confirm, and logout only."},
        "token_type": {"const": "Bearer"}, "expires_in": {"type": "integer", "maximum": 600},
        "scope": {"const": "mfa_enroll"}, "message": {"type": "string"},
        "agent": _object({"codename": {"type": "string"}, "role": role})})
    recovery_codes = {"type": "array", "minItems": 10, "maxItems": 10, "items": {
        "type": "string", "pattern": "^[0-9a-hjkmnp-tv-z]{4}(-[0-9a-hjkmnp-tv-z]{4}){3}$"},
        "description": "Each good for one login in place of a code; shown this once, stored only as hashes."}
    health = _object({"status": {"type": "string", "enum": ["ok", "degraded", "unavailable"]},
                      "degraded": {"type": "array", "items": {"type": "string"}},
                      "down": {"type": "array", "items": {"type": "string"}}}, required=["status"])
    return {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                       "description": "An access token from POST /api/auth/login or /api/auth/refresh."},
            "cookie": {"type": "apiKey", "in": "cookie", "name": "jwt",
                       "description": "The HttpOnly cookie login sets (the browser console's way)."},
            "console": {"type": "apiKey", "in": "header", "name": "X-HQ-Console",
                        "description": "Must be `1`. With the cookie, required for every change: a cookie alone "
                                       "never changes anything (403 forbidden)."},
        },
        "schemas": {
            "Agent": agent,
            "AgentWithPassword": agent_with_password,
            "NewAgent": _object({"codename": codename, "role": {"type": "string", "enum": levels},
                                 "password": new_password}, required=["codename", "role"]),
            "AgentChange": _object({"enabled": {"type": "boolean"}, "role": {"type": "string", "enum": levels}},
                                   required=[], minProperties=1),
            "NewPassword": _object({"password": new_password}, required=[]),
            "Socket": socket,
            "ServiceKey": _object({"name": {"type": "string", "description": "As created (unique regardless of case "
                                                                             "among keys not revoked)."},
                                   "role": role, "created": timestamp,
                                   "last_used": {"type": ["string", "null"],
                                                 "description": "When it was last accepted (kept within a minute); "
                                                               "null if never."}}),
            "NewServiceKey": _object({"name": codename, "role": {"type": "string", "enum": levels}}),
            "CreatedServiceKey": _object({"name": {"type": "string"}, "role": role, "created": timestamp,
                                          "key": {"type": "string", "pattern": "^hqk_[A-Za-z0-9_-]{43,}$",
                                                  "description": "The key: shown this once, stored only as a hash. "
                                                                 "Programs send it as Authorization: Bearer."}}),
            "Session": session,
            "TokenPair": token_pair,
            "EnrollmentLogin": enrollment_login,
            "MfaStatus": _object({"enrolled": {"type": "boolean", "description": "A confirmed second factor."},
                                  "pending": {"type": "boolean", "description": "Enrolment begun, not yet confirmed."},
                                  "required": {"type": "boolean", "description": "Its role is in `[auth] mfa_required`."},
                                  "recovery_codes_left": {"type": "integer", "minimum": 0, "maximum": 10}}),
            "MfaEnrollment": _object({
                "otpauth_uri": {"type": "string", "pattern": "^otpauth://totp/"},
                "secret": {"type": "string", "description": "Base32; shown this once, never again."},
                "qr_svg": {"type": "string", "description": "The URI as an SVG QR code (markup)."},
                "qr_data_uri": {"type": "string", "description": "The same as a data: URI, for an <img src>."}}),
            "RecoveryCodes": _object({"recovery_codes": recovery_codes}),
            "ConfirmedEnrollment": {"oneOf": [
                _ref("RecoveryCodes"),
                {**token_pair, "properties": {**token_pair["properties"], "recovery_codes": recovery_codes},
                 "required": [*token_pair["required"], "recovery_codes"],
                 "description": "Confirmed with an enrolment-only token: a full session in its place."}]},
            "Me": _object({"codename": {"type": "string"}, "role": role, "exp": {"type": "integer"}}),
            "Health": health,
            "Channel": _object({"name": {"type": "string"}, "read": {"type": "boolean"}, "write": {"type": "boolean"}}),
            "JWKS": _object({"keys": {"type": "array", "items": {"type": "object"}}}),
        },
    }


# paths ------------------------------------------------------------------------------------------
def _auth_paths() -> dict[str, Any]:
    body_problems = {"s413": ["payload_too_large"], "s415": ["unsupported_media_type"]}
    login_body = _object({"username": {"type": "string"}, "password": {"type": "string"},
                          "otp": {"type": "string", "description": "For an agent with a second factor: the code "
                                                                   "its app shows, or a recovery code."}},
                         required=["username", "password"], closed=False)
    refresh_body = _object({"refresh_token": {"type": "string"}}, required=[], closed=False)
    tokens = ok("A new token pair (also set as cookies).", _ref("TokenPair"), headers=_SET_COOKIE)
    return {
        "/api/auth/login": {"post": operation(
            "Log in with a codename and password (and a second factor's code)", "auth",
            {**ok("A new token pair (also set as cookies); for an agent whose role must use a second factor and "
                  "has none, a token good for enrolling one only (no refresh token).",
                  {"oneOf": [_ref("TokenPair"), _ref("EnrollmentLogin")]}, headers=_SET_COOKIE),
             **errors(s400=["bad_request"], s401=["invalid_credentials", "mfa_required", "invalid_otp"],
                      s403=["agent_disabled"],
                                s429=["too_many_attempts"], s503=["unavailable"], **body_problems)},
            body=json_body(login_body, description="Bodies are limited to 64 KiB."),
            description="Failed logins are limited per codename and per client address (429 with "
                        "Retry-After, even for the right password while limited). `mfa_required` and "
                        "`invalid_otp` come only after a correct password; a wrong code counts as a failure.")},
        "/api/auth/refresh": {"post": operation(
            "Exchange a refresh token for a new pair", "auth",
            {**tokens, **errors(s400=["bad_request"], s401=["token_missing", "token_invalid", "token_expired",
                                                             "token_reused"],
                                s503=["unavailable"], **body_problems)},
            body=json_body(refresh_body, required=False,
                           description="Or send no body and the `hq_refresh` cookie."),
            description="The old refresh token is dead afterwards; presenting a spent one again revokes the "
                        "whole session (token_reused), except within `[auth] refresh_grace` seconds.")},
        "/api/auth/logout": {"post": operation(
            "Log out: revoke this session and end its sockets", "auth",
            {**ok("Logged out; cookies cleared.", status=204), **errors(s401=AUTH_CODES, s503=["unavailable"])},
            security=READ_SECURITY)},
        "/api/auth/me": {"get": operation(
            "Who the presented token belongs to", "auth",
            {**ok("The agent, with its stored role.", _ref("Me")),
             **errors(s401=AUTH_CODES, s403=ENROLL_ONLY, s503=["unavailable"])},
            security=READ_SECURITY)},
        "/.well-known/jwks.json": {"get": operation(
            "Public verification keys (asymmetric algorithms)", "auth",
            {**ok("The JWKS.", _ref("JWKS")), **errors(s404=["not_found"])},
            description="404 under HMAC (HS256, the default): there is no public key.")},
    }


def _ops_paths() -> dict[str, Any]:
    return {
        "/healthz": {"get": operation(
            "Health for load balancers", "operations",
            {**ok("Serving: `ok`, or `degraded` while an optional backend (Redis) is down.", _ref("Health")),
             "503": {"description": "A required backend (the database) is down: take the node out.",
                     "content": {JSON: {"schema": _ref("Health")}}}})},
        "/metrics": {"get": operation(
            "Prometheus metrics", "operations",
            {"200": {"description": "Prometheus text format (OpenMetrics when asked for by Accept).",
                     "content": {"text/plain": {"schema": {"type": "string"}},
                                 "application/openmetrics-text": {"schema": {"type": "string"}}}}})},
        "/api/openapi.json": {"get": operation(
            "This document", "operations", ok("OpenAPI 3.1.", {"type": "object"}))},
        "/api/asyncapi.json": {"get": operation(
            "The real-time endpoints (Socket.IO and the plain WebSocket)", "operations",
            ok("AsyncAPI 3.0: every event, payload, answer and close code.", {"type": "object"}))},
    }


def _console_paths() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for path, (name, content_type) in STATIC_FILES.items():
        what = "The browser console" if path == "/" else f"The console's {name}"
        paths[path] = {"get": operation(what, "console", ok(what, {"type": "string"}, media_type=content_type))}
    paths["/api/channels"] = {"get": operation(
        "The channels, and whether the caller may read and write each", "console",
        {**ok("Every channel, in configuration order.", {"type": "array", "items": _ref("Channel")}),
         **errors(s401=AUTH_CODES, s403=ENROLL_ONLY, s503=["unavailable"])},
        security=READ_SECURITY)}
    paths["/api/roles"] = {"get": operation(
        "The clearance levels (roles), lowest first", "console",
        {**ok("The configured levels; a director's console offers them for new agents and role changes.",
              {"type": "array", "items": {"type": "string"}}),
         **errors(s401=AUTH_CODES, s403=ENROLL_ONLY, s503=["unavailable"])},
        security=READ_SECURITY)}
    return paths


def _directors_paths() -> dict[str, Any]:
    reader = {"s401": AUTH_CODES, "s403": ["forbidden", *ENROLL_ONLY], "s503": ["unavailable"]}
    changer = {**reader, "s429": ["too_many_attempts"]}
    body_problems = {"s400": ["bad_request"], "s413": ["payload_too_large"], "s415": ["unsupported_media_type"]}
    codename = path_parameter("codename", "The agent's codename (any case).")
    tag = "directors"
    return {
        "/api/agents": {
            "get": operation("Every agent", tag, {
                **ok("Agents, oldest first, each with its last login, live sockets and whether it has a second "
                     "factor (`mfa`).", {"type": "array", "items": _ref("Agent")}, headers=_PARTIAL),
                **errors(**reader)}, security=READ_SECURITY),
            "post": operation("Create an agent", tag, {
                **ok("The agent; `password` when HQ generated it (shown once).", _ref("AgentWithPassword"),
                     status=201, headers={"Location": {"schema": {"type": "string"}}}),
                **errors(**changer, **body_problems, s409=["agent_exists"])},
                security=CHANGE_SECURITY, body=json_body(_ref("NewAgent"))),
        },
        "/api/agents/{codename}": {"patch": operation("Enable, disable or change the role of an agent", tag, {
            **ok("The agent.", _ref("Agent")),
            **errors(**changer, **body_problems, s404=["not_found"])},
            security=CHANGE_SECURITY, body=json_body(_ref("AgentChange")), parameters=[codename],
            description="Disabling or a role change ends the agent's sessions and live sockets on every node. "
                        "A director cannot disable or demote themselves here (403 forbidden).")},
        "/api/agents/{codename}/password": {"post": operation("Set or generate an agent's password", tag, {
            **ok("The agent; `password` when HQ generated it (shown once).", _ref("AgentWithPassword")),
            **errors(**changer, **body_problems, s404=["not_found"])},
            security=CHANGE_SECURITY, body=json_body(_ref("NewPassword"), required=False), parameters=[codename],
            description="Ends the agent's sessions and live sockets on every node.")},
        "/api/sessions": {"get": operation("Live login sessions and their sockets on every node", tag, {
            **ok("Sessions, oldest first.", {"type": "array", "items": _ref("Session")}, headers=_PARTIAL),
            **errors(**reader)}, security=READ_SECURITY,
            description="Live: not revoked, and holding an unspent, unexpired refresh token or a live socket.")},
        "/api/keys": {
            "get": operation("Every service key", tag, {
                **ok("Keys not revoked, oldest first; never the key itself.",
                     {"type": "array", "items": _ref("ServiceKey")}),
                **errors(**reader)}, security=READ_SECURITY),
            "post": operation("Create a service key", tag, {
                **ok("The key, in `key`: shown this once.", _ref("CreatedServiceKey"), status=201,
                     headers={"Location": {"schema": {"type": "string"}}}),
                **errors(**changer, **body_problems, s409=["key_exists"])},
                security=CHANGE_SECURITY, body=json_body(_ref("NewServiceKey")),
                description="A key acts with its role, as `key:NAME`, on the real-time endpoints (Socket.IO and "
                            "the plain WebSocket); never on /api/auth/*, the directors' API or the console."),
        },
        "/api/keys/{name}": {"delete": operation("Revoke a service key", tag, {
            **ok("Revoked: refused at once on every node; its live sockets are sent session_ended "
                 "{reason: revoked} and disconnected.", status=204),
            **errors(**changer, s404=["not_found"])},
            security=CHANGE_SECURITY, parameters=[path_parameter("name", "The key's name (any case).")])},
        "/api/sessions/{sid}": {"delete": operation("End a session", tag, {
            **ok("Revoked; its sockets are sent session_ended {reason: revoked} and disconnected.", status=204),
            **errors(**changer, s404=["not_found"])},
            security=CHANGE_SECURITY, parameters=[path_parameter("sid", "The session id.")])},
    }


def _mfa_paths() -> dict[str, Any]:
    """The second factor (hq/http/second_factor.py): an agent enrolling itself, and directors for any agent."""
    body_problems = {"s413": ["payload_too_large"], "s415": ["unsupported_media_type"]}
    code_body = json_body(_object({"code": {"type": "string", "description": "Six digits from the app."}}))
    own = "Also takes the enrolment-only token login hands an agent that must enrol."
    # The directors' change budget (hq/http/guards.py) covers these routes too.
    director = {"s401": AUTH_CODES, "s403": ["forbidden", *ENROLL_ONLY], "s404": ["not_found"],
                "s429": ["too_many_attempts"], "s503": ["unavailable"]}
    codename = path_parameter("codename", "The agent's codename (any case).")
    return {
        "/api/auth/mfa": {"get": operation(
            "The caller's second factor", "mfa",
            {**ok("Whether it is enrolled, must be, and how many recovery codes are left.", _ref("MfaStatus")),
             **errors(s401=AUTH_CODES, s503=["unavailable"])}, security=READ_SECURITY, description=own)},
        "/api/auth/mfa/enroll": {"post": operation(
            "Begin enrolling a TOTP app (the password again)", "mfa",
            {**ok("A new secret, pending until confirmed: shown this once.", _ref("MfaEnrollment")),
             **errors(s400=["bad_request"], s401=[*AUTH_CODES, "invalid_credentials"], s403=["forbidden"],
                      s409=["mfa_already_enrolled"], s429=["too_many_attempts"], s503=["unavailable"],
                      **body_problems)},
            security=CHANGE_SECURITY, body=json_body(_object({"password": {"type": "string"}})),
            description=f"{own} A wrong password counts toward the login limits. An enrolled agent must be reset "
                        "first (409).")},
        "/api/auth/mfa/confirm": {"post": operation(
            "Complete the enrolment with a code from the app", "mfa",
            {**ok("The recovery codes, shown this once; with an enrolment-only token also a full session (its "
                  "token pair and cookies) in place of the enrolment one.", _ref("ConfirmedEnrollment"),
                  headers=_SET_COOKIE),
             **errors(s400=["bad_request", "invalid_otp"], s401=AUTH_CODES, s403=["forbidden"],
                      s409=["mfa_not_pending"], s503=["unavailable"], **body_problems)},
            security=CHANGE_SECURITY, body=code_body, description=own)},
        "/api/agents/{codename}/mfa": {
            "post": operation("Begin enrolling a TOTP app for an agent", "mfa", {
                **ok("A new secret for the agent, pending until confirmed: shown this once.", _ref("MfaEnrollment")),
                **errors(**director, s400=["bad_request"], s409=["mfa_already_enrolled"], **body_problems)},
                security=CHANGE_SECURITY, parameters=[codename],
                body=json_body(_object({}), required=False, description="Empty, or no body."),
                description="Director clearance. For a director beside the agent and its phone."),
            "delete": operation("Remove an agent's second factor", "mfa", {
                **ok("Removed (if it had one) with its recovery codes; its sessions and sockets ended.", status=204),
                **errors(**director)}, security=CHANGE_SECURITY, parameters=[codename],
                description="Director clearance. An agent whose role must use one enrols again at its next login."),
        },
        "/api/agents/{codename}/mfa/confirm": {"post": operation(
            "Complete an agent's enrolment with a code from its app", "mfa",
            {**ok("The recovery codes, shown this once.", _ref("RecoveryCodes")),
             **errors(**director, s400=["bad_request", "invalid_otp"], s409=["mfa_not_pending"], **body_problems)},
            security=CHANGE_SECURITY, parameters=[codename], body=code_body, description="Director clearance.")},
    }


def _socketio_paths() -> dict[str, Any]:
    description = ("Engine.IO / Socket.IO transport (long-polling and the websocket upgrade), not a JSON API: "
                   "use a Socket.IO client. Events and refusals are in the README's Socket.IO section.")
    text = {"text/plain": {"schema": {"type": "string"}}}
    engineio_error = {"application/json": {"schema": _object({"code": {"type": "integer"},
                                                             "message": {"type": "string"}})}}
    responses = {"200": {"description": "Engine.IO packets", "content": {**text, "application/octet-stream": {
        "schema": {"type": "string"}}}},
        "400": {"description": "Not a valid Engine.IO request (an Engine.IO error, not HQ's error shape)",
                "content": {**text, **engineio_error}}}
    return {"/socket.io/": {method: operation(f"Socket.IO ({method.upper()})", "socket.io", responses,
                                              description=description)
                            for method in ("get", "post", "options", "put", "delete", "patch")}}


def _plain_websocket_paths() -> dict[str, Any]:
    description = ("The plain WebSocket endpoint (RFC 6455, JSON text frames; contract §8): only a WebSocket "
                   "upgrade is served, not a JSON API. The token is the `token` query parameter, "
                   "`Authorization: Bearer`, the `jwt` cookie, or a first `auth` frame within 5 s; every "
                   "refusal is a close code after the upgrade. Frames, acks and close codes: "
                   "`GET /api/asyncapi.json` and the README's Plain WebSocket section.")
    responses = {
        "101": {"description": "Switching Protocols: the WebSocket is open (refusals follow as close codes)"},
        "426": {"description": "Upgrade Required: the request was not a WebSocket upgrade",
                "headers": {"Upgrade": {"description": "`websocket`", "schema": {"type": "string"}}},
                "content": {JSON: {"schema": error_schema(["bad_request"])}}}}
    channel = path_parameter("channel", "A channel to join as soon as the socket opens (4004 if there is none, "
                                        "4003 below its read clearance).")
    return {
        "/ws": {"get": operation("Plain WebSocket", "websocket", responses, description=description)},
        "/ws/{channel}": {"get": operation("Plain WebSocket, joined to a channel on open", "websocket", responses,
                                           parameters=[channel], description=description)},
        "/missions": {"get": operation("Plain WebSocket joined to `missions` (the original design's address)",
                                       "websocket", responses, description=description)},
    }


def build_document(settings: Settings) -> dict[str, Any]:
    """The whole document for these settings."""
    paths: dict[str, Any] = {}
    # The second factor's routes after the directors': the error-code tests run in this order, and
    # theirs depend on a per-director limit that refills with time.
    for section in (_auth_paths(), _directors_paths(), _mfa_paths(), _console_paths(), _ops_paths(),
                    _socketio_paths(), _plain_websocket_paths()):
        paths.update(section)
    return {
        "openapi": "3.1.0",
        "info": {"title": "HQ", "version": "1", "description": (
            "HQ's HTTP API. Errors are `{\"error\": {\"code\", \"message\"}}`; each error response lists the "
            "codes it may carry. Every GET also answers HEAD. Any request that needs a backend that is down "
            "is answered 503 `unavailable`.")},
        "tags": [{"name": "auth"}, {"name": "mfa", "description": "The TOTP second factor."},
                 {"name": "directors", "description": "Director clearance by stored role."},
                 {"name": "console"}, {"name": "operations"}, {"name": "socket.io"},
                 {"name": "websocket", "description": "The plain WebSocket endpoint (see the AsyncAPI document)."}],
        "paths": paths,
        "components": _components(settings),
    }


class OpenApi(ServedDocument):
    """Serves the OpenAPI document at ``GET /api/openapi.json``."""

    PATH = "/api/openapi.json"

    def __init__(self, settings: Settings) -> None:
        super().__init__(self.PATH, build_document(settings))
