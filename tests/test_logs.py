"""The server's logs over the polling transport and for hostile raw requests: audit lines for
accepted / refused / ended connections and logins, and no token in the audit log or the server's
stdout/stderr (access log included), however a client spells or mangles the request.

tests/test_audit.py covers the audit log's fields and the websocket transport; this module adds
long-polling, raw HTTP requests python clients would never send, and the redaction helpers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any, AsyncIterator, Iterator

import aiohttp
import pytest
from yarl import URL

from hq.ops.access_log import RedactingFilter, redact_query, redact_text

from .support import PASSWORD, HQServer, make_server

WRONG_PASSWORD = "Wr0ng-But-Secret-Password"


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HQServer]:
    server = make_server(tmp_path_factory.mktemp("logs"), {"hank": "handler"}).start()
    yield server
    server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def login(http: aiohttp.ClientSession, server: HQServer, password: str = PASSWORD) -> tuple[int, Any]:
    async with http.post(f"{server.url}/api/auth/login", json={"username": "hank", "password": password}) as r:
        return r.status, await r.json()


class Poller:
    """A raw Engine.IO long-polling client (the request URL is sent exactly as given)."""

    def __init__(self, http: aiohttp.ClientSession, server: HQServer, query: str = "") -> None:
        self.http = http
        self.base = f"{server.url}/socket.io/?EIO=4&transport=polling{query}"
        self.sid = ""

    async def open(self) -> None:
        async with self.http.get(URL(self.base, encoded=True)) as r:
            assert r.status == 200
            self.sid = json.loads((await r.text())[1:])["sid"]

    async def send(self, packet: str) -> None:
        async with self.http.post(URL(f"{self.base}&sid={self.sid}", encoded=True), data=packet,
                                  headers={"Content-Type": "text/plain"}) as r:
            assert r.status == 200

    async def receive(self) -> list[str]:
        async with self.http.get(URL(f"{self.base}&sid={self.sid}", encoded=True)) as r:
            assert r.status == 200
            return (await r.text()).split("\x1e")

    async def connect(self, auth: dict[str, str] | None = None) -> str:
        """Send the Socket.IO connect; returns the answer packet ("40..." or "44...")."""
        await self.send("40" + (json.dumps(auth) if auth else ""))
        return (await self.receive())[0]

    async def close(self) -> None:
        await self.send("1")


async def wait_for_audit(server: HQServer, event: str, count: int = 1, timeout: float = 10) -> list[dict[str, Any]]:
    """Audit lines of ``event``, once at least ``count`` are written."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        lines = [line for line in server.audit_lines() if line["event"] == event]
        if len(lines) >= count or asyncio.get_running_loop().time() > deadline:
            return lines
        await asyncio.sleep(0.05)


def assert_nowhere(server: HQServer, *secrets: str) -> None:
    """No secret (nor a long piece of one) in the audit log or the server's own output."""
    audit = (server.workdir / "audit.log").read_text(encoding="utf-8")
    output = server.log_path.read_text(encoding="utf-8", errors="replace")
    for secret in secrets:
        for piece in {secret, secret[-24:], secret[:40]}:
            assert piece not in audit, f"secret in the audit log: {piece[:10]}…"
            assert piece not in output, f"secret in the server log: {piece[:10]}…"


async def test_polling_with_query_token(http: aiohttp.ClientSession, logged: HQServer) -> None:
    _, body = await login(http, logged)
    token = body["access_token"]
    poller = Poller(http, logged, f"&token={token}")
    await poller.open()
    assert (await poller.connect()).startswith("40")  # the query's token was used
    accepted = await wait_for_audit(logged, "connection_accepted")
    assert accepted[-1]["codename"] == "hank" and accepted[-1]["transport"] == "polling"
    await poller.close()
    ended = await wait_for_audit(logged, "connection_ended")
    assert ended and ended[-1]["codename"] == "hank" and ended[-1]["transport"] == "polling"
    await asyncio.sleep(0.2)  # the access log line is written when each response completes
    assert "token=[redacted]" in logged.log_path.read_text()
    assert_nowhere(logged, token, body["refresh_token"], PASSWORD)


async def test_refusals_over_polling_are_audited_with_their_code(http: aiohttp.ClientSession,
                                                                 logged: HQServer) -> None:
    _, body = await login(http, logged)
    forged = body["access_token"][:-8] + "AAAAAAAA"
    before = len(await wait_for_audit(logged, "connection_refused", 0))
    for auth, code in (({"token": forged}, "token_invalid"), (None, "token_missing")):
        poller = Poller(http, logged)
        await poller.open()
        answer = await poller.connect(auth)
        assert answer.startswith("44") and json.loads(answer[2:])["data"] == {"code": code}
        await poller.close()
    refused = (await wait_for_audit(logged, "connection_refused", before + 2))[before:]
    assert [line["code"] for line in refused] == ["token_invalid", "token_missing"]
    assert all(line["transport"] == "polling" and "codename" not in line for line in refused)
    assert_nowhere(logged, forged, body["access_token"])


async def test_percent_encoded_parameter_name_is_redacted(http: aiohttp.ClientSession, logged: HQServer) -> None:
    # "tok%65n" decodes to "token": HQ reads it as the token, so the log must hide it too.
    _, body = await login(http, logged)
    token = body["access_token"]
    for spelling in ("tok%65n", "%74oken", "t%6Fk%65n"):
        poller = Poller(http, logged, f"&{spelling}={token}")
        await poller.open()
        assert (await poller.connect()).startswith("40"), spelling
        await poller.close()
    await asyncio.sleep(0.2)
    assert_nowhere(logged, token)


async def raw_request(server: HQServer, request: bytes) -> bytes:
    """Send bytes as they are and return the start of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(200), 10)
    writer.close()
    await writer.wait_closed()
    return answer


async def test_malformed_requests_quoting_secrets(http: aiohttp.ClientSession, logged: HQServer) -> None:
    _, body = await login(http, logged)
    token, refresh = body["access_token"], body["refresh_token"]
    requests = [
        f"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\x01\r\n\r\n",
        f"GET /healthz HTTP/1.1\r\nHost: x\r\nCookie: jwt={token}; hq_refresh={refresh}\x7f\r\n\r\n",
        f"GET /socket.io/?EIO=4&transport=polling&token={token}\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
        f"GET /socket.io/?EIO=9&transport=polling&token={token} HTTP/1.1\r\nHost: x\r\n\r\n",
        f"GET /socket.io/?EIO=4&transport=polling&sid=nope&access_token={token} HTTP/1.1\r\nHost: x\r\n\r\n",
        f"POST /api/auth/refresh?refresh_token={refresh} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n{{",
        f"GET /api/auth/me?x=1;token={token} HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    for request in requests:
        answer = await raw_request(logged, request.encode("latin-1"))
        assert answer.startswith(b"HTTP/1."), answer
    status, _ = await login(http, logged, WRONG_PASSWORD)
    assert status == 401
    await asyncio.sleep(0.3)
    output = logged.log_path.read_text(errors="replace")
    assert "Bearer [redacted]" in output and "jwt=[redacted]" in output  # the lines were there, scrubbed
    assert_nowhere(logged, token, refresh, WRONG_PASSWORD, PASSWORD)


async def test_login_success_and_failure_are_audited(http: aiohttp.ClientSession, logged: HQServer) -> None:
    before_ok = len(await wait_for_audit(logged, "login_succeeded", 0))
    before_failed = len(await wait_for_audit(logged, "login_failed", 0))
    assert (await login(http, logged))[0] == 200
    assert (await login(http, logged, WRONG_PASSWORD))[0] == 401
    succeeded = (await wait_for_audit(logged, "login_succeeded", before_ok + 1))[before_ok:]
    failed = (await wait_for_audit(logged, "login_failed", before_failed + 1))[before_failed:]
    assert [(line["codename"], line["address"]) for line in succeeded] == [("hank", "127.0.0.1")]
    assert [(line["codename"], line["code"]) for line in failed] == [("hank", "invalid_credentials")]
    assert_nowhere(logged, WRONG_PASSWORD, PASSWORD)


# The redaction helpers themselves ------------------------------------------------------------------

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJoYW5rIn0.c2lnbmF0dXJlLXBhcnQ"


@pytest.mark.parametrize("target,expected", [
    ("/socket.io/?token=abc&EIO=4", "/socket.io/?token=[redacted]&EIO=4"),
    ("/x?EIO=4&tok%65n=abc", "/x?EIO=4&tok%65n=[redacted]"),
    ("/x?a=1;TOKEN=abc", "/x?a=1;TOKEN=[redacted]"),
    ("/x?access_token=a&refresh_token=b&jwt=c", "/x?access_token=[redacted]&refresh_token=[redacted]&jwt=[redacted]"),
    ("/x?tokens=kept&t=1.5&sid=abc", "/x?tokens=kept&t=1.5&sid=abc"),
    ("/healthz", "/healthz"),
])
def test_redact_query(target: str, expected: str) -> None:
    assert redact_query(target) == expected


def test_redact_text_keeps_names_and_ordinary_text() -> None:
    assert redact_text(f"b'Authorization: Bearer {JWT}'") == "b'Authorization: Bearer [redacted]'"
    assert redact_text(f"Cookie: jwt={JWT}; hq_refresh=abcDEF123") == "Cookie: jwt=[redacted]; hq_refresh=[redacted]"
    assert redact_text(f"pasted {JWT} here") == "pasted [redacted] here"
    ordinary = 'File "aiohttp/_http_parser.pyx", line 723, in aiohttp._http_parser.HttpParser.feed_data'
    assert redact_text(ordinary) == ordinary


def test_filter_scrubs_messages_arguments_and_tracebacks() -> None:
    try:
        raise ValueError(f"bad header b'Authorization: Bearer {JWT}'")
    except ValueError:
        record = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "request %s failed",
                                   (f"/?token={JWT}",), sys.exc_info())
    assert RedactingFilter().filter(record)
    text = logging.Formatter().format(record)
    assert JWT not in text and "token=[redacted]" in text and "Bearer [redacted]" in text
