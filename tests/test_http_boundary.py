"""hq/http/boundary.py is the one place HTTP refusals become answers: each error family and domain error
raised by a route gets the contract's status, body and headers; anything unexpected is 500 ``internal``
with the traceback in the log only. In process (aiohttp's test client), with stubs where a route needs
the domain.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any, AsyncIterator, Callable, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import hq.http
from hq.addresses import AddressResolver
from hq.auth.agents import AgentAdminError, UnknownSessionError
from hq.auth.identity import Principal
from hq.auth.mfa import OtpRejected
from hq.auth.mfa_admin import MfaAdminError
from hq.auth.passwords import PasswordPolicyError
from hq.errors import AuthError, HQError, LoginError, RequestError, UnavailableError
from hq.http.boundary import clear_cookies_on_token_error, error_boundary
from hq.http.guards import DirectorGuard
from hq.http.second_factor import SecondFactorRoutes
from hq.store import Agent, AgentExistsError, StoreUnavailable, UnknownAgentError

Client = TestClient[web.Request, web.Application]

#: (what a route raises, the status, the code) for every family the boundary knows.
RAISED: list[tuple[Exception, int, str]] = [
    (AuthError("no token", "token_missing"), 401, "token_missing"),
    (AuthError("expired", "token_expired"), 401, "token_expired"),
    (AuthError("a disabled agent's token", "agent_disabled"), 401, "agent_disabled"),
    (AuthError("enrol first", "mfa_enrollment_required"), 403, "mfa_enrollment_required"),
    (LoginError("wrong", "invalid_credentials"), 401, "invalid_credentials"),
    (LoginError("send the code", "mfa_required"), 401, "mfa_required"),
    (LoginError("wrong code", "invalid_otp"), 401, "invalid_otp"),
    (LoginError("disabled", "agent_disabled"), 403, "agent_disabled"),
    (LoginError("slow down", "too_many_attempts", retry_after=7), 429, "too_many_attempts"),
    (RequestError("bad", "bad_request"), 400, "bad_request"),
    (RequestError("no", "forbidden"), 403, "forbidden"),
    (RequestError("none", "not_found"), 404, "not_found"),
    (RequestError("twice", "agent_exists"), 409, "agent_exists"),
    (RequestError("reset first", "mfa_already_enrolled"), 409, "mfa_already_enrolled"),
    (RequestError("begin first", "mfa_not_pending"), 409, "mfa_not_pending"),
    (RequestError("wrong code", "invalid_otp"), 400, "invalid_otp"),
    (RequestError("too big", "payload_too_large"), 413, "payload_too_large"),
    (RequestError("json please", "unsupported_media_type"), 415, "unsupported_media_type"),
    (RequestError("too many changes", "too_many_attempts", retry_after=3), 429, "too_many_attempts"),
    (RequestError("foreign", "origin_not_allowed"), 400, "origin_not_allowed"),
    (HQError("reinstall", "not_installed"), 503, "not_installed"),
    (UnavailableError("connection refused by db.internal:5432"), 503, "unavailable"),
    (StoreUnavailable("connection refused by db.internal:5432"), 503, "unavailable"),
    (AgentAdminError("unknown role 'king'"), 400, "bad_request"),
    (PasswordPolicyError("at least 12 characters"), 400, "bad_request"),
    (AgentExistsError("Fox"), 409, "agent_exists"),
    (UnknownAgentError("nobody"), 404, "not_found"),
    (UnknownSessionError("0" * 32), 404, "not_found"),
    (MfaAdminError("reset first", "mfa_already_enrolled"), 409, "mfa_already_enrolled"),
    (OtpRejected("wrong code"), 400, "invalid_otp"),
]


def raising(exc: Exception) -> Callable[[web.Request], Any]:
    """A route that refuses by raising ``exc``, as every route does."""
    async def handler(request: web.Request) -> web.StreamResponse:
        raise exc
    return handler


class Refusal:
    """What the test app's routes raise; set by each test (an app's own state is frozen once it serves)."""

    exc: Exception = RuntimeError("no refusal set")


RAISE = web.AppKey("raise", Refusal)


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    """An app behind the boundary whose routes raise what the test puts in ``client.app[RAISE]``."""
    app = web.Application(middlewares=[error_boundary])
    app[RAISE] = Refusal()

    async def raise_it(request: web.Request) -> web.StreamResponse:
        raise request.app[RAISE].exc

    async def refresh_like(request: web.Request) -> web.StreamResponse:
        clear_cookies_on_token_error(request)
        raise request.app[RAISE].exc

    app.router.add_get("/raise", raise_it)
    app.router.add_post("/refresh", refresh_like)
    app.router.add_get("/socket.io/", raising(web.HTTPNotFound(text="engineio's own answer")))
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


@pytest.mark.parametrize("exc, status, code", RAISED, ids=[f"{type(e).__name__}-{c}" for e, _, c in RAISED])
async def test_each_error_family_gets_its_status_code_and_headers(client: Client, exc: Exception, status: int,
                                                                   code: str) -> None:
    client.app[RAISE].exc = exc
    async with client.get("/raise") as reply:
        body = await reply.json()
        assert reply.status == status
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
        assert body["error"]["code"] == code and body["error"]["message"]
        assert reply.headers["Cache-Control"] == "no-store"
        retry_after = reply.headers.get("Retry-After")
        challenge = reply.headers.get("WWW-Authenticate")
    assert "db.internal" not in body["error"]["message"]  # a driver's words stay in the server
    advised = exc.retry_after if isinstance(exc, HQError) else 0
    assert retry_after == ("1" if code == "unavailable" else str(advised) if advised else None)
    if isinstance(exc, AuthError):
        expected = {"token_missing": "invalid_request", "mfa_enrollment_required": "insufficient_scope"}
        assert challenge == f'Bearer error="{expected.get(code, "invalid_token")}"'
    else:
        assert challenge is None


async def test_an_unexpected_exception_is_500_internal_with_the_traceback_in_the_log_only(
        client: Client, caplog: pytest.LogCaptureFixture) -> None:
    client.app[RAISE].exc = ZeroDivisionError("the secret detail")
    with caplog.at_level(logging.ERROR, logger="hq.http.boundary"):
        async with client.get("/raise") as reply:
            assert reply.status == 500
            text = await reply.text()
    assert json.loads(text) == {"error": {"code": "internal", "message": "internal error"}}
    assert "secret detail" not in text and "Traceback" not in text
    logged = [record for record in caplog.records if record.name == "hq.http.boundary"]
    assert len(logged) == 1 and "GET /raise" in logged[0].getMessage()
    assert logged[0].exc_info is not None and logged[0].exc_info[0] is ZeroDivisionError


async def test_aiohttps_own_errors_are_json_and_socketio_keeps_its_answers(client: Client) -> None:
    async with client.get("/nowhere") as reply:
        assert reply.status == 404 and (await reply.json())["error"]["code"] == "not_found"
    async with client.delete("/raise") as reply:
        assert reply.status == 405 and (await reply.json())["error"]["code"] == "method_not_allowed"
        assert reply.headers["Allow"] == "GET,HEAD"
    async with client.get("/socket.io/") as reply:
        assert reply.status == 404 and await reply.text() == "engineio's own answer"


async def test_a_refused_refresh_clears_the_cookies_but_a_backend_down_does_not(client: Client) -> None:
    client.app[RAISE].exc = AuthError("spent", "token_reused")
    async with client.post("/refresh") as reply:
        assert reply.status == 401
        assert {cookie.key: cookie["max-age"] for cookie in reply.cookies.values()} == {"jwt": "0", "hq_refresh": "0"}
    client.app[RAISE].exc = UnavailableError("down")
    async with client.post("/refresh") as reply:
        assert reply.status == 503 and not reply.cookies  # retrying with the same cookie is right
    client.app[RAISE].exc = AuthError("expired", "token_expired")
    async with client.get("/raise") as reply:
        assert reply.status == 401 and not reply.cookies  # only where the route asked for it


def test_no_other_http_module_builds_an_error_answer() -> None:
    """A route has one way to refuse (raise); only the boundary writes the error body."""
    package = Path(hq.http.__file__).parent
    body = re.compile(r'"error":\s*\{\s*"code"|error_response|json_errors|except \(?[A-Za-z, ]*'
                      r'(HQError|AuthError|LoginError|RequestError|UnavailableError|Refused)')
    builders = {path.name: body.findall(path.read_text()) for path in sorted(package.glob("*.py"))
                if path.name != "boundary.py"}
    assert {name: found for name, found in builders.items() if found} == {}
    assert body.search(Path(package, "boundary.py").read_text())  # the pattern finds what it looks for


# The second factor's routes ask for the password again: agent_disabled is 403 there as at login -------
class _Sessions:
    """The session service, for an agent disabled between its token check and the password check."""

    async def check_password(self, agent: Agent, password: str, address: str) -> None:
        raise LoginError("this agent is disabled", "agent_disabled")


class _Admin:
    """The second factor's admin: one agent, enabled when its token was checked."""

    async def agent(self, codename: str) -> Agent:
        return Agent(codename, "director", True, "2024-01-01T00:00:00Z", "hash")


class _Authenticator:
    """Every token is the director Fox's."""

    async def identify(self, token: str | None, allow_scopes: frozenset[str] = frozenset()) -> Principal:
        return Principal("Fox", "director", "0" * 32, 2**31)


async def test_agent_disabled_is_403_on_the_second_factors_password_check() -> None:
    authenticator = cast(Any, _Authenticator())
    routes = SecondFactorRoutes(cast(Any, SimpleNamespace(limits=SimpleNamespace(login_body_max_bytes=65536))),
                                cast(Any, _Admin()), cast(Any, _Sessions()), authenticator,
                                DirectorGuard(authenticator, "director"), AddressResolver(()))
    app = web.Application(middlewares=[error_boundary])
    app.add_routes(routes.routes())
    async with TestClient(TestServer(app)) as test_client:
        async with test_client.post("/api/auth/mfa/enroll", json={"password": "a-long-password"},
                                    headers={"Authorization": "Bearer some-token"}) as reply:
            assert reply.status == 403
            assert (await reply.json())["error"]["code"] == "agent_disabled"
