"""The HTTP API over a real HQ: login (every failure row of contract §2), cookies, /me, /healthz,
jwks, and JSON errors for unknown routes. The 429 rows live in tests/test_limits.py.

Every failed login here counts against 127.0.0.1 on the shared server; the module stays well
under the per-address limit (20) and the per-codename limit (5).
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator

import aiohttp
import jwt
import pytest

from .support import PASSWORD, HQServer

LONG_PASSWORD = "L" * 72 + "-and-the-part-bcrypt-alone-would-drop"   # 109 bytes
HUGE_PASSWORD = "é" * 1024                                           # 1024 characters, 2048 bytes
LOGIN_KEYS = {"access_token", "token_type", "expires_in", "refresh_token", "agent"}


@pytest.fixture(scope="module")
def api_hq(shared_hq: HQServer) -> HQServer:
    """The shared HQ plus agents with a mixed-case codename, long passwords, and one disabled."""
    shared_hq.add_agent("MixedCase", "handler", LONG_PASSWORD)
    shared_hq.add_agent("Huge.Pass", "analyst", HUGE_PASSWORD)
    shared_hq.add_agent("dis", "analyst")
    assert shared_hq.cli("agents", "disable", "dis").returncode == 0
    return shared_hq


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post_login(http: aiohttp.ClientSession, server: HQServer, body: Any = None, *, raw: bytes | None = None,
                     content_type: str | None = "application/json") -> tuple[int, Any, aiohttp.ClientResponse]:
    """POST /api/auth/login; returns (status, parsed JSON, response)."""
    data = raw if raw is not None else json.dumps(body).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    async with http.post(f"{server.url}/api/auth/login", data=data, headers=headers) as r:
        return r.status, await r.json(), r


def error_code(body: Any) -> str:
    """The contract's error code, after checking the error shape."""
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]["code"]


async def test_login_success_shape(http: aiohttp.ClientSession, api_hq: HQServer) -> None:
    status, body, response = await post_login(http, api_hq, {"username": "hank", "password": PASSWORD})
    assert status == 200 and set(body) == LOGIN_KEYS
    assert body["token_type"] == "Bearer" and body["expires_in"] == 900
    assert body["agent"] == {"codename": "hank", "role": "handler"}
    assert isinstance(body["refresh_token"], str) and len(body["refresh_token"]) >= 43  # >= 256 bits
    assert response.headers["Cache-Control"] == "no-store"


async def test_login_cookies(http: aiohttp.ClientSession, api_hq: HQServer) -> None:
    status, body, response = await post_login(http, api_hq, {"username": "fox", "password": PASSWORD})
    assert status == 200
    cookies = {}
    for header in response.headers.getall("Set-Cookie"):
        name_value, *attributes = [part.strip() for part in header.split(";")]
        name, _, value = name_value.partition("=")
        cookies[name] = (value, {a.split("=")[0].lower(): a.partition("=")[2] for a in attributes})
    assert set(cookies) == {"jwt", "hq_refresh"}
    access, refresh = cookies["jwt"], cookies["hq_refresh"]
    assert access[0] == body["access_token"] and refresh[0] == body["refresh_token"]
    for _, attrs in (access, refresh):
        assert "httponly" in attrs and "secure" in attrs and attrs["samesite"] == "Strict"
    assert access[1]["path"] == "/" and access[1]["max-age"] == "900"
    assert refresh[1]["path"] == "/api/auth" and refresh[1]["max-age"] == "604800"


@pytest.mark.parametrize("typed", ["MIXEDCASE", "mixedcase", "mIxEdCaSe"])
async def test_codenames_match_regardless_of_case(http: aiohttp.ClientSession, api_hq: HQServer, typed: str) -> None:
    status, body, _ = await post_login(http, api_hq, {"username": typed, "password": LONG_PASSWORD})
    assert status == 200 and body["agent"] == {"codename": "MixedCase", "role": "handler"}
    assert jwt.decode(body["access_token"], options={"verify_signature": False})["sub"] == "MixedCase"


async def test_long_passwords(http: aiohttp.ClientSession, api_hq: HQServer) -> None:
    # Over 72 bytes: the whole password counts, not a truncated prefix.
    assert (await post_login(http, api_hq, {"username": "MixedCase", "password": LONG_PASSWORD}))[0] == 200
    status, body, _ = await post_login(http, api_hq, {"username": "MixedCase", "password": "L" * 72 + "-wrong"})
    assert status == 401 and error_code(body) == "invalid_credentials"
    # 1024 characters (2048 bytes) work; longer ones fail cleanly, never with a 500.
    status, body, _ = await post_login(http, api_hq, {"username": "huge.pass", "password": HUGE_PASSWORD})
    assert status == 200 and body["agent"]["codename"] == "Huge.Pass"
    for too_long in (HUGE_PASSWORD + "é", "x" * 60_000):
        status, body, _ = await post_login(http, api_hq, {"username": "Huge.Pass", "password": too_long})
        assert status == 401 and error_code(body) == "invalid_credentials"


async def test_unknown_agent_and_wrong_password_look_the_same(http: aiohttp.ClientSession, api_hq: HQServer) -> None:
    bodies = []
    for body in ({"username": "nobody-here", "password": PASSWORD}, {"username": "ana", "password": "wrong " * 3}):
        async with http.post(f"{api_hq.url}/api/auth/login", json=body) as r:
            assert r.status == 401
            bodies.append(await r.read())
    assert bodies[0] == bodies[1]
    assert error_code(json.loads(bodies[0])) == "invalid_credentials"


async def test_malformed_codenames_are_invalid_credentials(http: aiohttp.ClientSession, api_hq: HQServer) -> None:
    for username in ("", "has space", "x" * 65):
        status, body, _ = await post_login(http, api_hq, {"username": username, "password": PASSWORD})
        assert status == 401 and error_code(body) == "invalid_credentials", username


async def test_disabled_agent_only_after_the_right_password(http: aiohttp.ClientSession, api_hq: HQServer) -> None:
    status, body, _ = await post_login(http, api_hq, {"username": "dis", "password": "not the password"})
    assert status == 401 and error_code(body) == "invalid_credentials"
    status, body, response = await post_login(http, api_hq, {"username": "DIS", "password": PASSWORD})
    assert status == 403 and error_code(body) == "agent_disabled"
    assert "Set-Cookie" not in response.headers


BAD_BODIES: dict[str, bytes] = {
    "malformed JSON": b'{"username": "ana", "password": ',
    "not UTF-8": b'{"username": "\xff\xfe", "password": "x"}',
    "empty body": b"",
    "array": b'["ana", "pw"]',
    "string": b'"ana"',
    "null": b"null",
    "number": b"42",
    "missing username": json.dumps({"password": PASSWORD}).encode(),
    "missing password": json.dumps({"username": "ana"}).encode(),
    "username number": json.dumps({"username": 7, "password": PASSWORD}).encode(),
    "password null": json.dumps({"username": "ana", "password": None}).encode(),
    "password list": json.dumps({"username": "ana", "password": [PASSWORD]}).encode(),
    "username object": json.dumps({"username": {"$ne": ""}, "password": PASSWORD}).encode(),
    "password bool": json.dumps({"username": "ana", "password": True}).encode(),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
async def test_bad_request(http: aiohttp.ClientSession, api_hq: HQServer, case: str) -> None:
    status, body, _ = await post_login(http, api_hq, raw=BAD_BODIES[case])
    assert status == 400 and error_code(body) == "bad_request"


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
async def test_unsupported_media_type(http: aiohttp.ClientSession, api_hq: HQServer, content_type: str | None) -> None:
    raw = json.dumps({"username": "ana", "password": PASSWORD}).encode()
    async with http.post(f"{api_hq.url}/api/auth/login", data=raw,
                         headers={"Content-Type": content_type} if content_type else {}) as r:
        if content_type is None:
            assert "Content-Type" not in r.request_info.headers or \
                r.request_info.headers["Content-Type"] != "application/json"
        assert r.status == 415 and error_code(await r.json()) == "unsupported_media_type"


async def test_json_with_charset_is_accepted(http: aiohttp.ClientSession, api_hq: HQServer) -> None:
    status, _, _ = await post_login(http, api_hq, {"username": "ana", "password": PASSWORD},
                                    content_type="application/json; charset=utf-8")
    assert status == 200


def padded_login(size: int) -> bytes:
    """A valid login body of exactly ``size`` bytes."""
    base = json.dumps({"username": "ana", "password": PASSWORD, "pad": ""}).encode()
    return base[:-2] + b"x" * (size - len(base)) + b'"}'


async def test_body_of_exactly_64_kib_is_read(http: aiohttp.ClientSession, api_hq: HQServer) -> None:
    raw = padded_login(65536)
    assert len(raw) == 65536
    assert (await post_login(http, api_hq, raw=raw))[0] == 200


async def test_body_over_64_kib_is_413(http: aiohttp.ClientSession, api_hq: HQServer) -> None:
    status, body, _ = await post_login(http, api_hq, raw=padded_login(65537))
    assert status == 413 and error_code(body) == "payload_too_large"


async def test_chunked_body_over_64_kib_is_413(http: aiohttp.ClientSession, api_hq: HQServer) -> None:
    raw = padded_login(70_000)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(raw), 4096):
            yield raw[start:start + 4096]

    async with http.post(f"{api_hq.url}/api/auth/login", data=chunks(),
                         headers={"Content-Type": "application/json"}) as r:
        assert "Content-Length" not in r.request_info.headers
        assert r.status == 413 and error_code(await r.json()) == "payload_too_large"


async def test_chunked_body_in_many_pieces_is_read_whole(http: aiohttp.ClientSession, api_hq: HQServer) -> None:
    raw = padded_login(20_000)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(raw), 1000):
            yield raw[start:start + 1000]

    async with http.post(f"{api_hq.url}/api/auth/login", data=chunks(),
                         headers={"Content-Type": "application/json"}) as r:
        assert r.status == 200, await r.text()


async def test_me_with_bearer_and_cookie(http: aiohttp.ClientSession, api_hq: HQServer) -> None:
    token = api_hq.login("dora")["access_token"]
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    for headers in ({"Authorization": f"Bearer {token}"}, {"Cookie": f"jwt={token}"}):
        async with http.get(f"{api_hq.url}/api/auth/me", headers=headers) as r:
            assert r.status == 200 and await r.json() == {"codename": "dora", "role": "director", "exp": exp}
            assert r.headers["Cache-Control"] == "no-store"
    async with http.get(f"{api_hq.url}/api/auth/me") as r:
        assert r.status == 401 and error_code(await r.json()) == "token_missing"
    async with http.get(f"{api_hq.url}/api/auth/me", headers={"Cookie": "jwt=garbage"}) as r:
        assert r.status == 401 and error_code(await r.json()) == "token_invalid"


async def test_healthz(http: aiohttp.ClientSession, api_hq: HQServer) -> None:
    async with http.get(f"{api_hq.url}/healthz") as r:
        assert r.status == 200 and await r.json() == {"status": "ok"}


async def test_jwks_is_404_under_hs256(http: aiohttp.ClientSession, api_hq: HQServer) -> None:
    async with http.get(f"{api_hq.url}/.well-known/jwks.json") as r:
        assert r.status == 404 and error_code(await r.json()) == "not_found"


@pytest.mark.parametrize("method,path,status", [
    ("GET", "/no/such/page", 404), ("GET", "/api/auth/nothing", 404), ("POST", "/api/nothing", 404),
    ("GET", "/api/auth/login", 405), ("DELETE", "/api/auth/me", 405)])
async def test_unknown_routes_answer_json(http: aiohttp.ClientSession, api_hq: HQServer, method: str, path: str,
                                          status: int) -> None:
    async with http.request(method, f"{api_hq.url}{path}") as r:
        assert r.status == status and r.content_type == "application/json"
        error_code(await r.json())
        assert b"<html" not in (await r.read()).lower()
