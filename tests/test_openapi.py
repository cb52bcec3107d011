"""``GET /api/openapi.json`` is true: every route is described, every documented error code is
reachable, and schemathesis finds the real HQ conforming to it.

* Coverage: every route :func:`hq.app.create_app` registers is in the document and every documented
  path and method is a route (HEAD, which aiohttp adds beside each GET, is said once in the document).
* Reachability: for every error response of every operation, each code of its ``enum`` is driven
  deliberately against a real HQ (``test_every_documented_error_code_is_reachable``); 503
  ``unavailable`` last, by stopping the private PostgreSQL cluster the HQ runs on. A route documented
  with a code no driver here provokes fails that test: add the driver to :func:`provoke` (codes
  every route shares) or to :data:`SPECIAL` (one route's own).
* schemathesis (property-based, from PyPI) against the same real HQ, with a director's token: no 5xx,
  response bodies, status codes and content types as documented, for positive and negative data.
  Bounded: :data:`EXAMPLES` per operation and mode, no shrinking; the counts are printed (``-s``).
  (Its pytest plugin's ``parametrize`` reads a pytest internal that pytest 9 removed, so the cases are
  run with Hypothesis' ``@given`` over each operation's strategy instead.)

The HQ of this module runs on a private PostgreSQL cluster (tests/services.py's PrivatePostgres), which
the last test stops: the machine's shared PostgreSQL is never touched.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import asyncpg
import jwt
import pyotp
import pytest
import requests
import schemathesis
from schemathesis import GenerationMode
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,
                                 status_code_conformance)

from hq.app import create_app
from hq.auth.tokens import KeyRing, TokenService, hash_refresh_token
from hq.config import Settings, load_settings
from hq.config import LimitsSettings
from hq.http.openapi import build_document

from .services import PrivatePostgres, private_postgres
from .support import PASSWORD, HQServer
from .threaded_hq import make_in_process_server

DOCUMENT = build_document(Settings())
METHODS = ("get", "post", "put", "patch", "delete", "options", "head")
# Changes are limited per director: schemathesis takes turns among the first five, the drivers use the rest.
DIRECTORS = [f"dir{n}" for n in range(9)]
# KEYS_DRIVER drives the service keys' routes: one director's change budget does not cover every route.
FUZZERS, (DRIVER, EXPIRING, LIMITED, KEYS_DRIVER) = DIRECTORS[:5], DIRECTORS[5:]
#: Routes not documented yet (a new feature's, until it documents them); test_pending_routes_are_still_routes
#: fails once one is documented or gone. Issue 12's TOTP routes are documented now.
PENDING: set[tuple[str, str]] = set()
#: The second factor's drivers (issue 12): enrolled, pending, locked by wrong passwords at enrolment,
#: and one whose role must enrol (``mfa_required`` below) and so gets an enrolment-only token.
MFA_AGENTS = {"enrolled": "field-operative", "pending": "field-operative", "mfa-locked": "field-operative",
              "enrollee": "analyst"}


def documented_operations() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in DOCUMENT["paths"].items() for method in item if method in METHODS}


def app_routes(tmp_path: Path) -> set[tuple[str, str]]:
    app = create_app(Settings(base_dir=tmp_path))
    return {(route.method, route.resource.canonical) for route in app.router.routes()
            if route.resource is not None and route.method != "HEAD"}


# coverage -------------------------------------------------------------------------------------------
def test_every_route_is_documented(tmp_path: Path) -> None:
    routes = app_routes(tmp_path)
    assert routes - documented_operations() - PENDING == set()
    assert documented_operations() - routes == set()


def test_pending_routes_are_still_routes(tmp_path: Path) -> None:
    routes = app_routes(tmp_path)
    assert PENDING <= routes and not PENDING & documented_operations()


def test_every_get_answers_head_too(tmp_path: Path) -> None:
    app = create_app(Settings(base_dir=tmp_path))
    heads = {route.resource.canonical for route in app.router.routes() if route.method == "HEAD"}
    gets = {path for method, path in documented_operations() if method == "GET"}
    directors = {"/api/agents", "/api/sessions", "/api/keys"}  # HEAD is not offered on the directors' lists
    assert gets - directors <= heads and not heads & directors


def error_entries() -> list[tuple[str, str, int, str]]:
    """(method, path, status, code) for every documented JSON error."""
    entries = []
    for path, item in DOCUMENT["paths"].items():
        for method, op in item.items():
            for status, response in op["responses"].items():
                schema = response.get("content", {}).get("application/json", {}).get("schema", {})
                codes = schema.get("properties", {}).get("error", {}).get("properties", {}).get("code", {})
                for code in codes.get("enum", []):
                    entries.append((method.upper(), path, int(status), code))
    return entries


def test_the_document_is_served_and_valid(server: HQServer) -> None:
    served = requests.get(f"{server.url}/api/openapi.json", timeout=10)
    assert served.status_code == 200 and served.headers["Content-Type"].startswith("application/json")
    document = served.json()
    assert document["openapi"].startswith("3.1") and document["paths"].keys() == DOCUMENT["paths"].keys()
    assert document["components"]["securitySchemes"].keys() == {"bearer", "cookie", "console"}
    schemathesis.openapi.from_dict(document)  # validates against the OpenAPI 3.1 meta-schema
    for method, path, status, code in error_entries():
        assert 400 <= status < 600 and code


# the server -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def postgres() -> Iterator[PrivatePostgres]:
    with private_postgres() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def server(postgres: PrivatePostgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HQServer]:
    hq = make_in_process_server(tmp_path_factory.mktemp("openapi"), {DIRECTORS[0]: "director"},
                     storage={"url": postgres.url},
                     # a spent refresh token is reuse at once; analysts must enrol a second factor (the
                     # directors run the fuzzing, so they need none)
                     auth={"refresh_grace": 0, "mfa_required": ["analyst"]},
                     # schemathesis logs in with random names: only the per-codename limit may bite
                     limits={"login_failures_per_address": 1_000_000,
                             # an allowance spent stays spent for the 429 cases (one back every 20 s),
                             # however long a busy machine takes between spending it and the request
                             "director_changes_per_second": 0.05}).start()
    token = login(hq, DIRECTORS[0])["access_token"]  # the others through the API: quicker than the CLI
    agents = {"fox": "field-operative", "gone": "field-operative", "locked": "field-operative",
              **{name: "director" for name in DIRECTORS[1:]}, **MFA_AGENTS}
    for codename, role in agents.items():
        made = requests.post(f"{hq.url}/api/agents", json={"codename": codename, "role": role, "password": PASSWORD},
                             headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert made.status_code == 201, made.text
    yield hq
    hq.stop()


def login(server: HQServer, codename: str, password: str = PASSWORD) -> dict[str, Any]:
    response = requests.post(f"{server.url}/api/auth/login", json={"username": codename, "password": password},
                             timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


# schemathesis ---------------------------------------------------------------------------------------
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]


#: Examples per operation and generation mode: bounded so that the run adds seconds, not minutes, to CI.
EXAMPLES = 25


def _fuzz(operation: Any, mode: GenerationMode, server: HQServer) -> tuple[int, list[str]]:
    """Run schemathesis' generated cases of one mode against ``operation``; (cases, failures)."""
    label = f"{operation.method.upper()} {operation.path}"
    director = FUZZERS[sum(map(ord, label)) % len(FUZZERS)]
    ran: list[int] = []
    failures: list[str] = []

    @given(case=operation.as_strategy(mode))
    @settings(max_examples=EXAMPLES, deadline=None, phases=[Phase.generate], derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case: schemathesis.Case) -> None:
        ran.append(1)
        token = login(server, director)["access_token"]  # fresh: a generated logout may end the last one
        try:
            case.call_and_validate(base_url=server.url, headers={"Authorization": f"Bearer {token}"},
                                   checks=CHECKS, timeout=10)
        except (Exception, BaseExceptionGroup) as failure:  # every failing case is reported, not only the first
            failures.append(f"{label} [{mode.value}]: {str(failure).strip()[:2000]}")

    try:
        run()
    except Unsatisfiable:
        # Negative data needs something to break (a body, a parameter); operations without any have none.
        assert mode is GenerationMode.NEGATIVE and not ran, label
    return len(ran), failures


def test_schemathesis(server: HQServer) -> None:
    """Every operation but Socket.IO's, positive and negative data, with a director's Bearer token."""
    # The served document, loaded as a dict: from_url would leave the document's own route out.
    schema = schemathesis.openapi.from_dict(requests.get(f"{server.url}/api/openapi.json", timeout=10).json())
    # Credentials are ours (a fresh director token per case), not generated ones.
    schema.config.generation.update(with_security_parameters=False)
    operations, cases, failures = 0, 0, []
    # Not POST /api/auth/mfa/enroll: generated passwords are wrong ones, which count toward the login limit
    # of the director fuzzing it until it can no longer log in (as they must); its codes are driven below.
    for result in schema.exclude(path_regex=r"^/socket\.io/").exclude(path=MFA_ENROLL).get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            ran, failed = _fuzz(operation, mode, server)
            cases += ran
            failures += failed
    print(f"\nschemathesis: {operations} operations, {cases} test cases, {len(failures)} failures")
    expected = {op for op in documented_operations() if not op[1].startswith("/socket.io")} - {("POST", MFA_ENROLL)}
    assert operations == len(expected)
    assert not failures, "\n\n".join(failures)


def test_socketio_answers_as_documented(server: HQServer) -> None:
    """The Engine.IO endpoint, left out of the fuzzing: each method's answer to a request that is not
    a handshake (and to a polling handshake) has a documented status and content type."""
    item = DOCUMENT["paths"]["/socket.io/"]
    for method, operation in item.items():
        for query in ("", "?EIO=4&transport=polling", "?EIO=3&transport=carrier-pigeon"):
            response = requests.request(method.upper(), f"{server.url}/socket.io/{query}", timeout=10)
            documented = operation["responses"].get(str(response.status_code))
            assert documented is not None, (method, query, response.status_code)
            media_type = response.headers["Content-Type"].split(";")[0]
            assert media_type in documented["content"], (method, query, media_type)
            if media_type == "application/json":
                assert set(response.json()) == {"code", "message"}


def test_schemathesis_catches_a_document_that_lies(server: HQServer) -> None:
    """The checks above are not vacuous: with a document that says agents carry a field they do not,
    and that GET /api/agents answers 201, schemathesis reports the real HQ as not conforming."""
    document = requests.get(f"{server.url}/api/openapi.json", timeout=10).json()
    agent = document["components"]["schemas"]["Agent"]
    agent["properties"]["clearance_code"] = {"type": "string"}
    agent["required"].append("clearance_code")
    schema = schemathesis.openapi.from_dict(document)
    schema.config.generation.update(with_security_parameters=False)
    (operation,) = [r.ok() for r in schema.include(path="/api/agents", method="GET").get_all_operations()]
    ran, failures = _fuzz(operation, GenerationMode.POSITIVE, server)
    assert ran >= 1 and len(failures) == ran and "clearance_code" in failures[0]
    responses = document["paths"]["/api/sessions"]["get"]["responses"]
    responses["201"] = responses.pop("200")
    schema = schemathesis.openapi.from_dict(document)
    schema.config.generation.update(with_security_parameters=False)
    (operation,) = [r.ok() for r in schema.include(path="/api/sessions", method="GET").get_all_operations()]
    ran, failures = _fuzz(operation, GenerationMode.POSITIVE, server)
    assert ran >= 1 and len(failures) == ran and "200" in failures[0]


# every documented error code, provoked ----------------------------------------------------------
@dataclass
class Drivers:
    """Credentials in every state a documented code needs, made once against the module's HQ."""

    server: HQServer
    director: str
    field_operative: str
    revoked: str
    disabled: str
    expired: str
    limited_director: str
    pair: dict[str, Any]
    #: The second factor's (issue 12): full tokens of an enrolled, a pending and a locked agent, the
    #: pending one's secret, and an enrolment-only token.
    enrolled: str = ""
    pending: str = ""
    pending_secret: str = ""
    mfa_locked: str = ""
    enrollee: str = ""
    #: A director of its own for /api/keys (see KEYS_DRIVER).
    keys_director: str = ""

    def url(self, path: str, missing: bool = False) -> str:
        codename = "nobody-here" if missing else "fox"
        return self.server.url + (path.replace("{codename}", codename).replace("{sid}", "0" * 32)
                                   .replace("{channel}", "hq").replace("{name}", codename))


def _forge_expired(server: HQServer, codename: str, role: str, sid: str) -> str:
    """An access token HQ itself signed, with its key, two hours ago (so it expired long since)."""
    settings_ = load_settings(server.config)
    tokens = TokenService(KeyRing.from_settings(settings_), settings_.auth)
    return tokens.issue(codename, role, sid, now=time.time() - 7200).token


@pytest.fixture(scope="module")
def drivers(server: HQServer) -> Drivers:
    director = login(server, DRIVER)["access_token"]
    revoked = login(server, "fox")["access_token"]
    assert requests.post(f"{server.url}/api/auth/logout", headers={"Authorization": f"Bearer {revoked}"},
                         timeout=10).status_code == 204
    disabled = login(server, "gone")["access_token"]
    assert requests.patch(f"{server.url}/api/agents/gone", json={"enabled": False},
                          headers={"Authorization": f"Bearer {director}"}, timeout=10).status_code == 200
    pair = login(server, EXPIRING)
    expired = _forge_expired(server, EXPIRING, "director", json_claims(pair["access_token"])["sid"])
    limited = login(server, LIMITED)["access_token"]
    for _ in range(LimitsSettings().director_changes_burst + 1):
        last = requests.patch(f"{server.url}/api/agents/fox", json={"enabled": True},
                              headers={"Authorization": f"Bearer {limited}"}, timeout=10)
    assert last.status_code == 429
    for _ in range(5):  # the per-codename login limit (default 5 failures)
        requests.post(f"{server.url}/api/auth/login", json={"username": "locked", "password": "wrong" * 3}, timeout=10)
    made = Drivers(server, director, login(server, "fox")["access_token"], revoked, disabled, expired, limited, pair)
    _mfa_drivers(made)
    made.keys_director = login(server, KEYS_DRIVER)["access_token"]
    return made


MFA_ENROLL = "/api/auth/mfa/enroll"


def _bearer_post(d: Drivers, path: str, body: Any, token: str) -> requests.Response:
    return requests.post(d.server.url + path, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def _mfa_drivers(d: Drivers) -> None:
    """Agents in each state of the second factor (their codes: :data:`SPECIAL`)."""
    d.enrolled = login(d.server, "enrolled")["access_token"]
    secret = _bearer_post(d, MFA_ENROLL, {"password": PASSWORD}, d.enrolled).json()["secret"]
    assert _bearer_post(d, "/api/auth/mfa/confirm", {"code": pyotp.TOTP(secret).now()}, d.enrolled).status_code == 200
    d.pending = login(d.server, "pending")["access_token"]
    d.pending_secret = _bearer_post(d, MFA_ENROLL, {"password": PASSWORD}, d.pending).json()["secret"]
    d.mfa_locked = login(d.server, "mfa-locked")["access_token"]
    for _ in range(5):  # wrong passwords at enrolment count like failed logins (default 5)
        assert _bearer_post(d, MFA_ENROLL, {"password": "wrong" * 3}, d.mfa_locked).status_code == 401
    enrolment_only = login(d.server, "enrollee")
    assert enrolment_only["scope"] == "mfa_enroll"
    d.enrollee = enrolment_only["access_token"]


def _wrong_code(secret: str) -> str:
    """Six digits that are not the code of the previous, current or next step."""
    totp, now = pyotp.TOTP(secret), time.time()
    near = {totp.at(now + 30 * step) for step in (-1, 0, 1, 2)}
    return next(code for code in ("000000", "111111", "222222", "333333", "444444") if code not in near)


def json_claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def _body_for(path: str, method: str) -> Any:
    """A body that passes each route's own checks, so that the code under test is what answers."""
    if path == "/api/auth/login":
        return {"username": "fox", "password": PASSWORD}
    if path == "/api/agents" and method == "POST":
        return {"codename": f"n{uuid.uuid4().hex[:8]}", "role": "analyst"}
    if path == "/api/keys" and method == "POST":
        return {"name": f"k{uuid.uuid4().hex[:8]}", "role": "analyst"}
    if path == "/api/agents/{codename}":
        return {"enabled": True}
    if path == "/api/agents/{codename}/password":
        return {}
    if path == MFA_ENROLL:
        return {"password": PASSWORD}
    if path in ("/api/auth/mfa/confirm", "/api/agents/{codename}/mfa/confirm"):
        return {"code": "123456"}
    return None


async def _expire_refresh_token(server: HQServer, token: str) -> None:
    settings_ = load_settings(server.config)
    conn = await asyncpg.connect(settings_.storage_url)
    try:
        await conn.execute("UPDATE refresh_tokens SET expires_at = 1 WHERE token_hash = $1", hash_refresh_token(token))
    finally:
        await conn.close()


#: Drivers for one (method, path, code) that the generic ones in :func:`provoke` do not cover: a new
#: route's own codes go here (an async function of :class:`Drivers` returning the response).
SPECIAL: dict[tuple[str, str, str], Callable[[Drivers], Awaitable[requests.Response]]] = {}


def _special(method: str, path: str, code: str, url_path: str, body: Any, token: Callable[[Drivers], str] | None,
             cookie: bool = False) -> None:
    """Register a driver sending ``body`` to ``url_path`` with a Bearer token (or, ``cookie``, the
    ``jwt`` cookie without ``X-HQ-Console``)."""
    async def drive(d: Drivers) -> requests.Response:
        headers = {}
        if token is not None:
            headers = {"Cookie": f"jwt={token(d)}"} if cookie else {"Authorization": f"Bearer {token(d)}"}
        sent = body(d) if callable(body) else body
        return await asyncio.to_thread(requests.request, method, d.server.url + url_path, json=sent,
                                       headers=headers, timeout=10)
    SPECIAL[(method, path, code)] = drive


# The second factor (issue 12).
_special("POST", "/api/auth/login", "mfa_required", "/api/auth/login",
         {"username": "enrolled", "password": PASSWORD}, None)
_special("POST", "/api/auth/login", "invalid_otp", "/api/auth/login",
         {"username": "enrolled", "password": PASSWORD, "otp": "not a code"}, None)
_special("POST", MFA_ENROLL, "invalid_credentials", MFA_ENROLL, {"password": "not the password"},
         lambda d: d.enrollee)
_special("POST", MFA_ENROLL, "forbidden", MFA_ENROLL, {"password": PASSWORD}, lambda d: d.director, cookie=True)
_special("POST", MFA_ENROLL, "mfa_already_enrolled", MFA_ENROLL, {"password": PASSWORD}, lambda d: d.enrolled)
_special("POST", MFA_ENROLL, "too_many_attempts", MFA_ENROLL, {"password": PASSWORD}, lambda d: d.mfa_locked)
_special("POST", "/api/auth/mfa/confirm", "forbidden", "/api/auth/mfa/confirm", {"code": "123456"},
         lambda d: d.director, cookie=True)
_special("POST", "/api/auth/mfa/confirm", "invalid_otp", "/api/auth/mfa/confirm",
         lambda d: {"code": _wrong_code(d.pending_secret)}, lambda d: d.pending)
_special("POST", "/api/auth/mfa/confirm", "mfa_not_pending", "/api/auth/mfa/confirm", {"code": "123456"},
         lambda d: d.director)
_special("POST", "/api/agents/{codename}/mfa", "mfa_already_enrolled", "/api/agents/enrolled/mfa", None,
         lambda d: d.director)
_special("POST", "/api/agents/{codename}/mfa/confirm", "invalid_otp", "/api/agents/pending/mfa/confirm",
         lambda d: {"code": _wrong_code(d.pending_secret)}, lambda d: d.director)
_special("POST", "/api/agents/{codename}/mfa/confirm", "mfa_not_pending", "/api/agents/fox/mfa/confirm",
         {"code": "123456"}, lambda d: d.director)


def _spend_allowance(d: Drivers) -> None:
    """Spend the limited director's change allowance again: it comes back one change every 2 s, and the
    entries before a 429 one may have taken longer than that (a busy machine)."""
    for _ in range(LimitsSettings().director_changes_burst + 1):
        spent = requests.patch(d.url("/api/agents/{codename}"), json={"enabled": True}, timeout=10,
                               headers={"Authorization": f"Bearer {d.limited_director}"})
        if spent.status_code == 429:
            return
    raise AssertionError("the change limit never answered 429")


async def provoke(d: Drivers, method: str, path: str, status: int, code: str) -> requests.Response:
    """Send the request that should be answered ``status`` ``code`` on ``method path``."""
    special = SPECIAL.get((method, path, code))
    if special is not None:
        return await special(d)
    body = _body_for(path, method)
    if code == "too_many_attempts" and path != "/api/auth/login":
        await asyncio.to_thread(_spend_allowance, d)
    headers: dict[str, str] = {}
    bearer = {"token_invalid": "not.a.token", "token_expired": d.expired, "token_revoked": d.revoked,
              "agent_disabled": d.disabled, "forbidden": d.field_operative,
              "too_many_attempts": d.limited_director, "mfa_enrollment_required": d.enrollee,
              }.get(code, d.keys_director if path.startswith("/api/keys") else d.director)
    if code != "token_missing":
        headers["Authorization"] = f"Bearer {bearer}"
    url = d.url(path, missing=code == "not_found")
    kwargs: dict[str, Any] = {"json": body} if body is not None else {}
    if path == "/api/auth/login":
        kwargs["json"] = {"bad_request": {"username": 7, "password": "x"},
                          "invalid_credentials": {"username": "nobody-at-all", "password": "not the password"},
                          "agent_disabled": {"username": "gone", "password": PASSWORD},
                          "too_many_attempts": {"username": "locked", "password": PASSWORD},
                          }.get(code, body)
    if path == "/api/auth/refresh":
        fresh = login(d.server, "fox")["refresh_token"]
        if code == "token_reused":
            requests.post(url, json={"refresh_token": fresh}, timeout=10)
        if code == "token_expired":
            await _expire_refresh_token(d.server, fresh)
        kwargs["json"] = {} if code == "token_missing" else {
            "refresh_token": "not-a-refresh-token" if code == "token_invalid" else fresh}
    if code == "bad_request" and path != "/api/auth/login":
        kwargs = {"data": b'{"not json', "headers": {"Content-Type": "application/json"}}
    if code == "unsupported_media_type":
        kwargs = {"data": b"{}", "headers": {"Content-Type": "text/plain"}}
    if code == "payload_too_large":
        kwargs = {"data": b'{"x": "' + b"y" * 70_000 + b'"}', "headers": {"Content-Type": "application/json"}}
    if code == "agent_exists":
        kwargs["json"] = {"codename": "FOX", "role": "analyst"}
    if code == "key_exists":  # a key of that name, made just before (names ignore case)
        made = await asyncio.to_thread(requests.post, url, json=body, headers=headers, timeout=10)
        assert made.status_code == 201, made.text
        kwargs["json"] = {**body, "name": body["name"].upper()}
    headers.update(kwargs.pop("headers", {}))
    return await asyncio.to_thread(requests.request, method, url, headers=headers, timeout=10, **kwargs)


ENTRIES = [e for e in error_entries() if e[3] != "unavailable"]


@pytest.mark.parametrize("method,path,status,code", ENTRIES, ids=[" ".join(map(str, e)) for e in ENTRIES])
async def test_every_documented_error_code_is_reachable(drivers: Drivers, method: str, path: str, status: int,
                                                        code: str) -> None:
    response = await provoke(drivers, method, path, status, code)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text
    if status in (429, 503):
        assert int(response.headers["Retry-After"]) >= 1


UNAVAILABLE = [e for e in error_entries() if e[3] == "unavailable"]


async def test_unavailable_is_reachable_on_every_route_that_documents_it(drivers: Drivers,
                                                                         postgres: PrivatePostgres) -> None:
    """Last: the database goes away (the private cluster is stopped) and every route that needs it says so."""
    assert UNAVAILABLE
    tokens = {"refresh": login(drivers.server, "fox")["refresh_token"]}
    postgres.stop()
    for method, path, status, _ in UNAVAILABLE:
        body = {"refresh_token": tokens["refresh"]} if path == "/api/auth/refresh" else _body_for(path, method)
        response = await asyncio.to_thread(
            requests.request, method, drivers.url(path), json=body,
            headers={"Authorization": f"Bearer {drivers.director}"}, timeout=15)
        assert response.status_code == 503, (method, path, response.text)
        assert response.json()["error"]["code"] == "unavailable" and response.headers["Retry-After"] == "1"
    health = requests.get(f"{drivers.server.url}/healthz", timeout=10)
    assert health.status_code == 503 and health.json()["status"] == "unavailable"
    assert "503" in DOCUMENT["paths"]["/healthz"]["get"]["responses"]
