"""The directors' API against real HQ processes: every route, every refusal, changes effective at once.

One HQ (SQLite) serves the module; each test makes the agents it changes, so tests do not depend on
one another. The two-node tests run two HQ processes on a fresh PostgreSQL database and the
machine's Redis (a key prefix of their own), as tests/test_cluster.py does.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import aiohttp
import jwt
import pyotp
import pytest

from hq.config import LimitsSettings
from hq.store import Store

from .cluster import start_cluster
from .services import REDIS_URL, ensure_redis
from .sio import RecordingClient
from .support import PASSWORD, HQServer
from .test_store import store  # noqa: F401  (the fixture: SQLite and PostgreSQL)
from .threaded_hq import make_in_process_server

AGENT_FIELDS = {"codename", "role", "enabled", "created", "last_login", "sockets", "mfa"}
SOCKET_FIELDS = {"node", "address", "transport", "user_agent", "since", "exp"}
DIRECTORS = ["dora", "dan", "dee", "dov", "dux", "dyl"]
_turn = iter(range(10**9))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HQServer]:
    """One HQ for the module: fox, hank and the directors (tests take turns, each director's changes
    being limited)."""
    hq = make_in_process_server(tmp_path_factory.mktemp("directors"),
                                {"fox": "field-operative", "hank": "handler", **{d: "director" for d in DIRECTORS}}).start()
    yield hq
    hq.stop()


class Api:
    """Requests to one HQ, answered as (status, parsed JSON or None, headers)."""

    def __init__(self, session: aiohttp.ClientSession, hq: HQServer) -> None:
        self.session = session
        self.hq = hq

    async def call(self, method: str, path: str, body: Any = None, *, token: str | None = None,
                   cookie: str | None = None, headers: dict[str, str] | None = None, raw: bytes | None = None,
                   content_type: str = "application/json") -> tuple[int, Any, Any]:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        if cookie is not None:
            sent["Cookie"] = f"jwt={cookie}"
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            sent["Content-Type"] = content_type
        async with self.session.request(method, f"{self.hq.url}{path}", data=data, headers=sent) as response:
            text = await response.text()
            parsed = json.loads(text) if text and response.content_type == "application/json" else None
            return response.status, parsed, response.headers

    async def login(self, codename: str, password: str = PASSWORD) -> dict[str, Any]:
        status, body, _ = await self.call("POST", "/api/auth/login", {"username": codename, "password": password})
        assert status == 200, body
        return body

    async def token(self, codename: str, password: str = PASSWORD) -> str:
        return (await self.login(codename, password))["access_token"]

    async def new_agent(self, director_token: str, role: str = "field-operative") -> str:
        """A fresh agent with the standard password."""
        codename = f"a{uuid.uuid4().hex[:10]}"
        status, body, _ = await self.call("POST", "/api/agents", {"codename": codename, "role": role,
                                                                  "password": PASSWORD}, token=director_token)
        assert status == 201, body
        return codename


@pytest.fixture
async def api(server: HQServer) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield Api(session, server)


def code(body: Any) -> str:
    assert isinstance(body, dict) and set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return body["error"]["code"]


async def director(api: Api) -> tuple[str, str]:
    """The next director in turn and a token of theirs."""
    codename = DIRECTORS[next(_turn) % len(DIRECTORS)]
    return codename, await api.token(codename)


async def fresh_director(api: Api) -> str:
    """A director of its own (a whole change allowance), logged in; returns the token."""
    codename = await api.new_agent((await director(api))[1], role="director")
    return await api.token(codename)


# reading --------------------------------------------------------------------------------------------
async def test_list_agents(api: Api) -> None:
    name, dora = await director(api)
    quiet = await api.new_agent(dora, role="analyst")
    status, agents, headers = await api.call("GET", "/api/agents", token=dora)
    assert status == 200 and headers["Cache-Control"] == "no-store" and "X-HQ-Sockets" not in headers
    assert all(set(agent) == AGENT_FIELDS for agent in agents), agents
    by_name = {agent["codename"]: agent for agent in agents}
    assert by_name[name]["role"] == "director" and by_name[name]["enabled"] is True
    assert by_name[name]["last_login"] is not None and by_name[name]["last_login"].endswith("Z")
    assert by_name[quiet]["last_login"] is None and by_name[quiet]["sockets"] == 0
    assert "password_hash" not in json.dumps(agents) and "$2b$" not in json.dumps(agents)


async def test_sockets_and_last_login_are_counted(api: Api, server: HQServer) -> None:
    name, dora = await director(api)
    agent = await api.new_agent(dora)
    token = await api.token(agent)
    sockets = [await RecordingClient().connect(server.url, token) for _ in range(2)]
    try:
        _, agents, _ = await api.call("GET", "/api/agents", token=dora)
        mine = next(a for a in agents if a["codename"] == agent)
        assert mine["sockets"] == 2 and mine["last_login"] is not None
    finally:
        for client in sockets:
            await client.close()


async def test_sessions_list_live_sessions_with_their_sockets(api: Api, server: HQServer) -> None:
    name, dora = await director(api)
    agent = await api.new_agent(dora)
    connected = await api.login(agent.upper())  # any case at login; the list shows the stored spelling
    idle = await api.login(agent)
    ended = await api.login(agent)
    await api.call("POST", "/api/auth/logout", token=ended["access_token"])
    client = await RecordingClient().connect(server.url, connected["access_token"])
    try:
        status, sessions, headers = await api.call("GET", "/api/sessions", token=dora)
        assert status == 200 and headers["Cache-Control"] == "no-store"
        mine = [s for s in sessions if s["codename"] == agent]
        assert len(mine) == 2, mine  # the logged-out one is not live
        assert all(set(s) == {"sid", "codename", "created", "sockets"} for s in mine)
        with_socket = next(s for s in mine if s["sockets"])
        idle_one = next(s for s in mine if not s["sockets"])
        (socket,) = with_socket["sockets"]
        assert set(socket) == SOCKET_FIELDS
        assert socket["address"] == "127.0.0.1" and socket["transport"] in ("websocket", "polling")
        assert socket["exp"] == claims(connected)["exp"] and socket["since"].endswith("Z")
        assert with_socket["sid"] == claims(connected)["sid"]
        assert socket["user_agent"].startswith("Python") and len(socket["node"].split(":")) == 3
        assert idle_one["sid"] != with_socket["sid"] and idle_one["sockets"] == []
        assert idle["access_token"] not in json.dumps(sessions)  # never a token
    finally:
        await client.close()


def claims(pair: dict[str, Any]) -> dict[str, Any]:
    """The claims of a login's access token (read without verifying: the server verified it)."""
    return jwt.decode(pair["access_token"], options={"verify_signature": False})


async def test_a_socket_that_upgrades_is_listed_as_websocket(api: Api, server: HQServer) -> None:
    name, dora = await director(api)
    agent = await api.new_agent(dora)
    pair = await api.login(agent)
    client = await RecordingClient().connect(server.url, pair["access_token"], transports=["polling", "websocket"])
    try:
        for _ in range(100):
            _, sessions, _ = await api.call("GET", "/api/sessions", token=dora)
            (session,) = [s for s in sessions if s["codename"] == agent]
            if session["sockets"] and session["sockets"][0]["transport"] == "websocket":
                break
            await asyncio.sleep(0.05)
        assert session["sockets"][0]["transport"] == "websocket", session
    finally:
        await client.close()


# who may --------------------------------------------------------------------------------------------
ROUTES = [("GET", "/api/agents", None), ("POST", "/api/agents", {"codename": "x1", "role": "analyst"}),
          ("PATCH", "/api/agents/fox", {"enabled": True}), ("POST", "/api/agents/fox/password", {}),
          ("GET", "/api/sessions", None), ("DELETE", f"/api/sessions/{'0' * 32}", None)]
CHANGES = [route for route in ROUTES if route[0] != "GET"]


@pytest.mark.parametrize("method,path,body", ROUTES)
async def test_no_token_is_401(api: Api, method: str, path: str, body: Any) -> None:
    status, answer, headers = await api.call(method, path, body)
    assert (status, code(answer)) == (401, "token_missing") and "Bearer" in headers["WWW-Authenticate"]
    status, answer, _ = await api.call(method, path, body, token="not.a.token")
    assert (status, code(answer)) == (401, "token_invalid")


@pytest.mark.parametrize("method,path,body", ROUTES)
async def test_other_roles_are_403(api: Api, method: str, path: str, body: Any) -> None:
    for codename in ("fox", "hank"):
        status, answer, _ = await api.call(method, path, body, token=await api.token(codename))
        assert (status, code(answer)) == (403, "forbidden")


async def test_clearance_is_the_stored_role(api: Api) -> None:
    """A demoted director's token (issued while a director) is refused at once: role from the store."""
    name, dora = await director(api)
    codename = await api.new_agent(dora, role="director")
    token = await api.token(codename)
    assert (await api.call("GET", "/api/agents", token=token))[0] == 200
    assert (await api.call("PATCH", f"/api/agents/{codename}", {"role": "handler"}, token=dora))[0] == 200
    status, answer, _ = await api.call("GET", "/api/agents", token=token)
    assert (status, code(answer)) == (401, "token_revoked")  # the role change ended its sessions
    status, answer, _ = await api.call("GET", "/api/agents", token=await api.token(codename))
    assert (status, code(answer)) == (403, "forbidden")


@pytest.mark.parametrize("method,path,body", CHANGES)
async def test_a_cookie_alone_changes_nothing(api: Api, method: str, path: str, body: Any) -> None:
    name, dora = await director(api)
    status, answer, _ = await api.call(method, path, body, cookie=dora)
    assert (status, code(answer)) == (403, "forbidden") and "X-HQ-Console: 1" in answer["error"]["message"]
    status, answer, _ = await api.call(method, path, body, cookie=dora, headers={"X-HQ-Console": "yes"})
    assert (status, code(answer)) == (403, "forbidden")


async def test_cookie_with_the_console_header_changes_and_reads(api: Api, server: HQServer) -> None:
    name, dora = await director(api)
    codename = f"c{uuid.uuid4().hex[:8]}"
    status, created, _ = await api.call("POST", "/api/agents", {"codename": codename, "role": "analyst"},
                                        cookie=dora, headers={"X-HQ-Console": "1"})
    assert status == 201 and isinstance(created["password"], str)
    assert (await api.call("GET", "/api/agents", cookie=dora))[0] == 200  # reading needs no header
    assert (await api.call("GET", "/api/sessions", cookie=dora))[0] == 200
    line = [e for e in server.audit_lines() if e["event"] == "admin_action" and e.get("target") == codename]
    assert line and line[-1].items() >= {"actor": name, "interface": "console", "action": "add"}.items()


# adding ---------------------------------------------------------------------------------------------
async def test_add_with_a_password(api: Api, server: HQServer) -> None:
    name, dora = await director(api)
    codename = f"Neo{uuid.uuid4().hex[:6]}"
    status, created, headers = await api.call("POST", "/api/agents", {"codename": codename, "role": "handler",
                                                                      "password": PASSWORD}, token=dora)
    assert status == 201 and set(created) == AGENT_FIELDS and headers["Location"] == f"/api/agents/{codename}"
    assert created["codename"] == codename and created["role"] == "handler" and created["enabled"] is True
    assert created["last_login"] is None and created["sockets"] == 0 and headers["Cache-Control"] == "no-store"
    assert (await api.login(codename.lower()))["agent"]["codename"] == codename
    status, answer, _ = await api.call("POST", "/api/agents", {"codename": codename.upper(), "role": "analyst"},
                                       token=dora)
    assert (status, code(answer)) == (409, "agent_exists")
    (line,) = [e for e in server.audit_lines() if e["event"] == "admin_action" and e.get("target") == codename]
    assert line.items() >= {"actor": name, "interface": "api", "action": "add", "role": "handler",
                            "address": "127.0.0.1"}.items()
    assert PASSWORD not in server.log_path.read_text() + json.dumps(server.audit_lines())


async def test_add_without_a_password_generates_one_shown_once(api: Api, server: HQServer) -> None:
    name, dora = await director(api)
    codename = f"g{uuid.uuid4().hex[:8]}"
    status, created, _ = await api.call("POST", "/api/agents", {"codename": codename, "role": "analyst"}, token=dora)
    assert status == 201 and set(created) == AGENT_FIELDS | {"password"} and len(created["password"]) >= 12
    await api.login(codename, created["password"])
    _, agents, _ = await api.call("GET", "/api/agents", token=dora)
    assert created["password"] not in json.dumps(agents)
    assert created["password"] not in server.log_path.read_text() + (server.workdir / "audit.log").read_text()


BAD_NEW_AGENTS = {
    "not an object": [1, 2],
    "missing role": {"codename": "ok1"},
    "missing codename": {"role": "analyst"},
    "unknown field": {"codename": "ok2", "role": "analyst", "admin": True},
    "codename not a string": {"codename": 7, "role": "analyst"},
    "role not a string": {"codename": "ok3", "role": None},
    "password not a string": {"codename": "ok4", "role": "analyst", "password": 123456789012},
    "null password": {"codename": "ok5", "role": "analyst", "password": None},
    "unknown role": {"codename": "ok6", "role": "emperor"},
    "short password": {"codename": "ok7", "role": "analyst", "password": "short"},
    "bad codename": {"codename": "no spaces", "role": "analyst"},
    "long codename": {"codename": "x" * 65, "role": "analyst"},
    "empty codename": {"codename": "", "role": "analyst"},
}


@pytest.mark.parametrize("case", BAD_NEW_AGENTS)
async def test_add_refuses_bad_bodies(api: Api, case: str) -> None:
    director = await fresh_director(api)
    status, answer, _ = await api.call("POST", "/api/agents", BAD_NEW_AGENTS[case], token=director)
    assert (status, code(answer)) == (400, "bad_request"), answer
    _, agents, _ = await api.call("GET", "/api/agents", token=director)
    assert not {a["codename"] for a in agents} & {"ok1", "ok2", "ok3", "ok4", "ok5", "ok6", "ok7", "no spaces"}


async def test_malformed_json_wrong_type_and_size(api: Api) -> None:
    director = await fresh_director(api)
    for method, path in (("POST", "/api/agents"), ("PATCH", "/api/agents/fox"), ("POST", "/api/agents/fox/password")):
        status, answer, _ = await api.call(method, path, raw=b'{"codename": ', token=director)
        assert (status, code(answer)) == (400, "bad_request")
        status, answer, _ = await api.call(method, path, raw=b'{}', content_type="text/plain", token=director)
        assert (status, code(answer)) == (415, "unsupported_media_type")
        status, answer, _ = await api.call(method, path, raw=b'{"x": "' + b"y" * 70_000 + b'"}', token=director)
        assert (status, code(answer)) == (413, "payload_too_large")


# changing -------------------------------------------------------------------------------------------
async def test_patch_refusals(api: Api) -> None:
    director = await fresh_director(api)
    status, answer, _ = await api.call("PATCH", "/api/agents/nobody-here", {"enabled": False}, token=director)
    assert (status, code(answer)) == (404, "not_found")
    status, answer, _ = await api.call("PATCH", "/api/agents/not%20valid", {"enabled": False}, token=director)
    assert (status, code(answer)) == (404, "not_found")
    for body in ({}, {"enabled": "false"}, {"enabled": 0}, {"role": "emperor"}, {"name": "x"}, {"role": None}):
        status, answer, _ = await api.call("PATCH", "/api/agents/fox", body, token=director)
        assert (status, code(answer)) == (400, "bad_request"), body


async def test_a_refused_patch_changes_nothing(api: Api) -> None:
    name, dora = await director(api)
    agent = await api.new_agent(dora)
    status, answer, _ = await api.call("PATCH", f"/api/agents/{agent}", {"enabled": False, "role": "emperor"},
                                       token=dora)
    assert (status, code(answer)) == (400, "bad_request")
    _, agents, _ = await api.call("GET", "/api/agents", token=dora)
    mine = next(a for a in agents if a["codename"] == agent)
    assert mine["enabled"] is True and mine["role"] == "field-operative"
    await api.login(agent)


async def test_user_agents_are_clipped_and_token_shaped_text_redacted(api: Api, server: HQServer) -> None:
    name, dora = await director(api)
    agent = await api.new_agent(dora)
    pair = await api.login(agent)
    hostile = f"Mozilla/5.0 {pair['access_token']} <script>" + '"{}"' + "x" * 600
    client = await RecordingClient().connect(server.url, pair["access_token"], headers={"User-Agent": hostile})
    try:
        _, sessions, _ = await api.call("GET", "/api/sessions", token=dora)
        (socket,) = next(s for s in sessions if s["codename"] == agent)["sockets"]
        shown = socket["user_agent"]
        assert shown.startswith("Mozilla/5.0 [redacted] ?script?") and len(shown) <= 257
        assert pair["access_token"] not in json.dumps(sessions) and not set('<>"{}') & set(shown)
    finally:
        await client.close()


async def test_a_director_cannot_disable_or_demote_themselves(api: Api) -> None:
    name, dora = await director(api)
    codename = await api.new_agent(dora, role="director")
    token = await api.token(codename)
    for body in ({"enabled": False}, {"role": "analyst"}, {"role": "director"}):
        status, answer, _ = await api.call("PATCH", f"/api/agents/{codename.upper()}", body, token=token)
        assert (status, code(answer)) == (403, "forbidden")
    status, agent, _ = await api.call("PATCH", f"/api/agents/{codename}", {"enabled": True}, token=token)
    assert status == 200 and agent["enabled"] is True and agent["role"] == "director"


async def test_disabling_ends_the_live_socket_and_refuses_login(api: Api, server: HQServer) -> None:
    name, dora = await director(api)
    agent = await api.new_agent(dora)
    pair = await api.login(agent)
    client = await RecordingClient().connect(server.url, pair["access_token"])
    status, changed, _ = await api.call("PATCH", f"/api/agents/{agent}", {"enabled": False}, token=dora)
    assert status == 200 and changed["enabled"] is False and set(changed) == AGENT_FIELDS
    assert (await client.wait_for("session_ended"))[0] == {"reason": "agent_disabled"}
    await client.wait_disconnected()
    status, answer, _ = await api.call("POST", "/api/auth/login", {"username": agent, "password": PASSWORD})
    assert (status, code(answer)) == (403, "agent_disabled")
    status, answer, _ = await api.call("POST", "/api/auth/refresh", {"refresh_token": pair["refresh_token"]})
    assert status == 401
    status, changed, _ = await api.call("PATCH", f"/api/agents/{agent}", {"enabled": True}, token=dora)
    assert status == 200 and changed["enabled"] is True
    await api.login(agent)
    actions = [(e["action"], e["target"]) for e in server.audit_lines()
               if e["event"] == "admin_action" and e.get("target") == agent]
    assert actions == [("add", agent), ("disable", agent), ("enable", agent)]


async def test_a_role_change_ends_sessions_and_takes_effect(api: Api, server: HQServer) -> None:
    name, dora = await director(api)
    agent = await api.new_agent(dora, role="handler")
    pair = await api.login(agent)
    client = await RecordingClient().connect(server.url, pair["access_token"])
    status, changed, _ = await api.call("PATCH", f"/api/agents/{agent}", {"role": "analyst", "enabled": True},
                                        token=dora)
    assert status == 200 and changed["role"] == "analyst"
    assert (await client.wait_for("session_ended"))[0] == {"reason": "revoked"}
    fresh = await api.login(agent)
    assert fresh["agent"]["role"] == "analyst"
    client = await RecordingClient().connect(server.url, fresh["access_token"])
    ack = await client.call("join", {"channel": "hq"})  # read needs handler
    assert ack["ok"] is False and ack["error"]["code"] == "forbidden"
    await client.close()


async def test_password_reset(api: Api, server: HQServer) -> None:
    name, dora = await director(api)
    agent = await api.new_agent(dora)
    pair = await api.login(agent)
    client = await RecordingClient().connect(server.url, pair["access_token"])
    new = "a brand new password, long enough"
    status, answer, _ = await api.call("POST", f"/api/agents/{agent}/password", {"password": new}, token=dora)
    assert status == 200 and set(answer) == AGENT_FIELDS
    assert (await client.wait_for("session_ended"))[0] == {"reason": "revoked"}
    status, refused, _ = await api.call("POST", "/api/auth/login", {"username": agent, "password": PASSWORD})
    assert (status, code(refused)) == (401, "invalid_credentials")
    await api.login(agent, new)
    # No body at all (or {}) generates one, returned once.
    status, answer, _ = await api.call("POST", f"/api/agents/{agent}/password", token=dora)
    assert status == 200 and set(answer) == AGENT_FIELDS | {"password"}
    await api.login(agent, answer["password"])
    for body in ({"password": "short"}, {"password": None}, {"pass": "x" * 20}, ["x"]):
        status, refused, _ = await api.call("POST", f"/api/agents/{agent}/password", body, token=dora)
        assert (status, code(refused)) == (400, "bad_request"), body
    status, refused, _ = await api.call("POST", "/api/agents/nobody-here/password", {}, token=dora)
    assert (status, code(refused)) == (404, "not_found")
    actions = [e["action"] for e in server.audit_lines() if e["event"] == "admin_action" and e.get("target") == agent]
    assert actions == ["add", "passwd", "passwd"]


async def test_ending_a_session(api: Api, server: HQServer) -> None:
    name, dora = await director(api)
    agent = await api.new_agent(dora)
    doomed, spared = await api.login(agent), await api.login(agent)
    ended = await RecordingClient().connect(server.url, doomed["access_token"])
    kept = await RecordingClient().connect(server.url, spared["access_token"])
    try:
        sid = claims(doomed)["sid"]
        _, sessions, _ = await api.call("GET", "/api/sessions", token=dora)
        assert len(next(s for s in sessions if s["sid"] == sid)["sockets"]) == 1
        status, body, _ = await api.call("DELETE", f"/api/sessions/{sid}", token=dora)
        assert status == 204 and body is None
        assert (await ended.wait_for("session_ended"))[0] == {"reason": "revoked"}
        await ended.wait_disconnected()
        assert kept.sio.connected and not kept.received("session_ended")
        status, answer, _ = await api.call("GET", "/api/auth/me", token=doomed["access_token"])
        assert (status, code(answer)) == (401, "token_revoked")
        _, sessions, _ = await api.call("GET", "/api/sessions", token=dora)
        assert sid not in {s["sid"] for s in sessions}
        for gone in (sid, "0" * 32, "not-a-session", "A" * 32):
            status, answer, _ = await api.call("DELETE", f"/api/sessions/{gone}", token=dora)
            assert (status, code(answer)) == (404, "not_found"), gone
        (line,) = [e for e in server.audit_lines() if e["event"] == "admin_action" and e.get("sid") == sid]
        assert line.items() >= {"actor": name, "interface": "api", "action": "end_session", "target": agent}.items()
    finally:
        await ended.close()
        await kept.close()


async def test_changes_are_rate_limited_per_director(api: Api) -> None:
    director = await fresh_director(api)
    statuses = []
    for _ in range(LimitsSettings().director_changes_burst + 1):
        status, answer, headers = await api.call("PATCH", "/api/agents/fox", {"enabled": True}, token=director)
        statuses.append(status)
    assert statuses[:LimitsSettings().director_changes_burst] == [200] * LimitsSettings().director_changes_burst
    assert (status, code(answer)) == (429, "too_many_attempts") and int(headers["Retry-After"]) >= 1
    for method, path, body in CHANGES:  # every change route, not only PATCH
        status, answer, headers = await api.call(method, path, body, token=director)
        assert (status, code(answer)) == (429, "too_many_attempts") and int(headers["Retry-After"]) >= 1
    assert (await api.call("GET", "/api/agents", token=director))[0] == 200  # reading is not limited
    other = await fresh_director(api)  # per director
    assert (await api.call("PATCH", "/api/agents/fox", {"enabled": True}, token=other))[0] == 200


async def test_the_mfa_field_follows_enrolment_and_reset(api: Api, server: HQServer) -> None:
    """``mfa`` is true only for a confirmed second factor; a reset makes it false and ends the agent's sessions."""
    name, dora = await director(api)
    agent = await api.new_agent(dora)

    async def listed() -> dict[str, Any]:
        status, agents, _ = await api.call("GET", "/api/agents", token=dora)
        assert status == 200 and all(type(a["mfa"]) is bool for a in agents), agents
        return next(a for a in agents if a["codename"] == agent)

    assert (await listed())["mfa"] is False
    status, enrollment, _ = await api.call("POST", f"/api/agents/{agent}/mfa", token=dora)
    assert status == 200, enrollment
    assert (await listed())["mfa"] is False  # begun, not confirmed: no factor yet
    totp = pyotp.TOTP(enrollment["secret"])
    status, confirmed, _ = await api.call("POST", f"/api/agents/{agent}/mfa/confirm", {"code": totp.now()},
                                          token=dora)
    assert status == 200 and len(confirmed["recovery_codes"]) == 10, confirmed
    assert (await listed())["mfa"] is True
    # Every answer in the agent's shape says so too (PATCH, password reset), and only for that agent.
    status, changed, _ = await api.call("PATCH", f"/api/agents/{agent}", {"enabled": True}, token=dora)
    assert status == 200 and set(changed) == AGENT_FIELDS and changed["mfa"] is True
    status, agents, _ = await api.call("GET", "/api/agents", token=dora)
    assert [a["codename"] for a in agents if a["mfa"]] == [agent], agents

    # The agent logs in with its code (the next step's: the confirming code is spent) and connects.
    status, pair, _ = await api.call("POST", "/api/auth/login", {"username": agent, "password": PASSWORD,
                                                                 "otp": totp.at(time.time() + 30)})
    assert status == 200, pair
    client = await RecordingClient().connect(server.url, pair["access_token"])
    try:
        status, _, _ = await api.call("DELETE", f"/api/agents/{agent}/mfa", token=dora)
        assert status == 204
        assert (await client.wait_for("session_ended"))[0] == {"reason": "revoked"}
    finally:
        await client.close()
    assert (await listed())["mfa"] is False
    await api.login(agent)  # a field operative logs in with its password alone again
    assert (await api.call("DELETE", f"/api/agents/{agent}/mfa", token=dora))[0] == 204  # nothing to remove
    assert (await listed())["mfa"] is False
    actions = [(e["actor"], e["action"]) for e in server.audit_lines()
               if e["event"] == "admin_action" and e.get("target") == agent and e["action"].startswith("mfa")]
    assert actions == [(name, "mfa_enroll"), (name, "mfa_confirm"), (name, "mfa_reset")], actions


async def test_cli_changes_are_audited_like_the_apis(server: HQServer) -> None:
    codename = f"cli{uuid.uuid4().hex[:6]}"
    server.add_agent(codename, "analyst")
    assert server.cli("agents", "disable", codename).returncode == 0
    assert server.cli("agents", "role", codename, "--role", "handler").returncode == 0
    lines = [e for e in server.audit_lines() if e["event"] == "admin_action" and e.get("target") == codename]
    assert [(e["actor"], e["interface"], e["action"]) for e in lines] == [
        ("cli", "cli", "add"), ("cli", "cli", "disable"), ("cli", "cli", "role")]
    assert lines[2]["role"] == "handler"


# the store's part, on both backends --------------------------------------------------------------------
async def test_store_live_sessions_and_last_logins(store: Store) -> None:
    """Live: unrevoked with an unspent, unexpired refresh token; last login: the newest session's creation."""
    now = time.time()
    await store.add_agent("Fox", "field-operative", "hash")
    await store.add_agent("Ana", "analyst", "hash")
    sids = {name: uuid.uuid4().hex for name in ("live", "rotated", "expired", "revoked", "tokenless")}
    for sid in sids.values():
        await store.create_session(sid, "Fox")
    await store.add_refresh_token("h-live", sids["live"], now + 60)
    await store.add_refresh_token("h-old", sids["rotated"], now + 60)
    await store.rotate_refresh_token("h-old", "h-new", now + 60, now)  # its successor is unspent: live
    await store.add_refresh_token("h-expired", sids["expired"], now - 1)
    await store.add_refresh_token("h-revoked", sids["revoked"], now + 60)
    await store.revoke_sessions("fox", "logged_out", sids["revoked"])
    live = await store.live_sessions(now)
    assert {s.session_id for s in live} == {sids["live"], sids["rotated"]}
    assert all(s.codename == "fox" and not s.revoked and s.created for s in live)
    logins = await store.last_logins()
    assert set(logins) == {"fox"} and logins["fox"] == max(s.created for s in live)


async def test_store_codenames_with_mfa(store: Store) -> None:
    """Confirmed factors only (a pending one is not), by lower-case codename, gone once reset."""
    for codename in ("Fox", "Ana", "Gus"):
        await store.add_agent(codename, "field-operative", "hash")
    assert await store.codenames_with_mfa() == set()
    for codename in ("Fox", "Ana"):
        assert await store.begin_mfa(codename, f"sealed-{codename}")
    assert await store.codenames_with_mfa() == set()  # pending
    assert await store.confirm_mfa("FOX", "sealed-Fox", 1, ["h1", "h2"])
    assert await store.codenames_with_mfa() == {"fox"}
    assert await store.reset_mfa("fox")
    assert await store.codenames_with_mfa() == set()


# two nodes ------------------------------------------------------------------------------------------
@pytest.fixture
async def two_nodes(tmp_path: Path) -> AsyncIterator[tuple[HQServer, HQServer]]:
    ensure_redis()
    async with start_cluster(tmp_path, 2, REDIS_URL, agents={"dora": "director", "fox": "field-operative"},
                             storage={"revocation_poll": 5.0},  # slow: only the push ends sockets in time
                             cluster={"presence_heartbeat": 0.5, "presence_ttl": 2.0}) as cluster:  # forgotten in 2 s
        yield cluster[0], cluster[1]


@pytest.mark.cluster
async def test_a_change_on_one_node_ends_sockets_on_the_other(two_nodes: tuple[HQServer, HQServer]) -> None:
    a, b = two_nodes
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        on_a, on_b = Api(session, a), Api(session, b)
        dora = await on_a.token("dora")
        fox_b = await on_b.login("fox")
        fox_a = await on_a.login("fox")
        sockets_b = [await RecordingClient().connect(b.url, fox_b["access_token"]) for _ in range(2)]
        socket_a = await RecordingClient().connect(a.url, fox_a["access_token"])
        try:
            # Node A lists node B's sockets (from Redis) beside its own.
            _, agents, headers = await on_a.call("GET", "/api/agents", token=dora)
            assert "X-HQ-Sockets" not in headers
            assert next(x for x in agents if x["codename"] == "fox")["sockets"] == 3
            _, sessions, _ = await on_a.call("GET", "/api/sessions", token=dora)
            by_sid = {s["sid"]: s for s in sessions if s["codename"] == "fox"}
            nodes = {socket["node"] for s in by_sid.values() for socket in s["sockets"]}
            assert len(nodes) == 2 and all(len(s["sockets"]) in (1, 2) for s in by_sid.values())
            b_session = next(s for s in by_sid.values() if len(s["sockets"]) == 2)
            # DELETE on node A ends that session's two sockets on node B, not the one on A.
            assert (await on_a.call("DELETE", f"/api/sessions/{b_session['sid']}", token=dora))[0] == 204
            for client in sockets_b:
                assert (await client.wait_for("session_ended", timeout=3))[0] == {"reason": "revoked"}
            assert socket_a.sio.connected and not socket_a.received("session_ended")
            # Disabling on node B ends the socket on node A.
            dora_b = await on_b.token("dora")
            assert (await on_b.call("PATCH", "/api/agents/fox", {"enabled": False}, token=dora_b))[0] == 200
            assert (await socket_a.wait_for("session_ended", timeout=3))[0] == {"reason": "agent_disabled"}
            await socket_a.wait_disconnected()
            # Sockets that went away are gone from the listing of both nodes (each node writes its
            # changes to Redis as they happen, without waiting for its heartbeat).
            for api, token in ((on_a, dora), (on_b, dora_b)):
                deadline = time.monotonic() + 3
                while True:
                    _, agents, _ = await api.call("GET", "/api/agents", token=token)
                    count = next(x for x in agents if x["codename"] == "fox")["sockets"]
                    if count == 0 or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.05)
                assert count == 0
            # A node that dies without goodbye: its sockets leave the other's lists with its TTL.
            assert (await on_b.call("PATCH", "/api/agents/fox", {"enabled": True}, token=dora_b))[0] == 200
            survivor = await RecordingClient().connect(b.url, (await on_b.login("fox"))["access_token"])
            sockets_b.append(survivor)
            _, agents, _ = await on_a.call("GET", "/api/agents", token=dora)
            assert next(x for x in agents if x["codename"] == "fox")["sockets"] == 1
            b.stop(signal.SIGKILL)
            deadline = time.monotonic() + 2.0 + 3
            while True:
                _, sessions, _ = await on_a.call("GET", "/api/sessions", token=dora)
                if not any(s["sockets"] for s in sessions) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            assert not any(s["sockets"] for s in sessions), sessions
        finally:
            for client in [*sockets_b, socket_a]:
                await client.close()
