"""HQ driven by the real JavaScript ``socket.io-client`` (from node_modules), through tests/js/driver.mjs.

Each test starts real HQ processes (tests/support.py) and one Node process running the driver; the
driver takes one JSON command per line and answers with JSON, so the tests below read as steps:
connect with io() options, emit with an acknowledgement, wait for an event, look at what arrived.
"""

from __future__ import annotations

import json
import queue
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from typing import Any, Callable, Iterator

import jwt
import pytest

from .cli import run_cli
from .support import ROOT, HQServer

DRIVER = ROOT / "tests" / "js" / "driver.mjs"
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)$")
TRANSPORTS = ["polling", "websocket"]


# --- the Node side ------------------------------------------------------------------------------
class JSDriverError(AssertionError):
    """The driver answered a command with an error, or did not answer in time."""


class JSDriver:
    """One ``node tests/js/driver.mjs`` process: send a command, get its JSON answer."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(["node", str(DRIVER)], cwd=ROOT, text=True, bufsize=1,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._answers: queue.Queue[dict[str, Any]] = queue.Queue()
        self._stderr: list[str] = []
        self._next_id = 0
        threading.Thread(target=self._read_answers, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_answers(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._answers.put(json.loads(line))

    def _read_stderr(self) -> None:
        assert self._process.stderr is not None
        self._stderr.extend(self._process.stderr)

    def call(self, op: str, reply_within: float = 30, **args: Any) -> Any:
        """Send one command and return its result (commands are answered in order here)."""
        self._next_id += 1
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps({"id": self._next_id, "op": op, **args}) + "\n")
        self._process.stdin.flush()
        try:
            reply = self._answers.get(timeout=reply_within)
        except queue.Empty:
            raise JSDriverError(f"driver did not answer {op} in {reply_within} s; stderr: {''.join(self._stderr)}") from None
        if reply.get("id") != self._next_id or not reply.get("ok"):
            raise JSDriverError(f"driver failed {op}: {reply}; stderr: {''.join(self._stderr)}")
        return reply["result"]

    def connect(self, name: str, url: str, timeout: float = 10, **options: Any) -> dict[str, Any]:
        """``io(url, options)``; returns ``{connected, id, transport}`` or ``{connected: false, error}``."""
        return self.call("connect", reply_within=timeout + 10, client=name, url=url, options=options,
                         timeout=int(timeout * 1000))

    def emit(self, name: str, event: str, *args: Any, timeout: float = 10) -> Any:
        """``socket.emitWithAck(event, ...args)``; returns the acknowledgement."""
        result = self.call("emit", reply_within=timeout + 10, client=name, event=event, args=list(args),
                           timeout=int(timeout * 1000))
        if result.get("timedOut"):
            raise JSDriverError(f"no acknowledgement of {event} within {timeout} s")
        return result["ack"]

    def wait(self, name: str, event: str, timeout: float = 10) -> dict[str, Any]:
        """The next unconsumed ``event`` received by ``name``: ``{event, args, t}`` (t in epoch ms)."""
        result = self.call("wait", reply_within=timeout + 10, client=name, event=event, timeout=int(timeout * 1000))
        if result.get("timedOut"):
            raise JSDriverError(f"{name} did not receive {event} within {timeout} s; it saw {result['seen']}")
        return result

    def events(self, name: str, event: str | None = None) -> list[dict[str, Any]]:
        """Every event ``name`` received so far (optionally only those called ``event``)."""
        return [e for e in self.call("events", client=name) if event is None or e["event"] == event]

    def state(self, name: str) -> dict[str, Any]:
        """``{connected, id, transport}`` of one client right now."""
        return self.call("state", client=name)

    def close(self) -> None:
        """Close stdin (the driver closes its sockets and exits) and reap the process."""
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


@pytest.fixture
def js() -> Iterator[JSDriver]:
    """A running JS driver for one test."""
    driver = JSDriver()
    yield driver
    driver.close()


# --- HTTP and token helpers ---------------------------------------------------------------------
def post(url: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
         ) -> tuple[int, dict[str, Any] | None]:
    """POST JSON; returns (status, parsed body or None)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, method="POST", data=data,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw, status = response.read(), response.status
    except urllib.error.HTTPError as error:
        raw, status = error.read(), error.code
    return status, json.loads(raw) if raw else None


def logout(hq: HQServer, token: str) -> int:
    """POST /api/auth/logout with a Bearer token; returns the status."""
    return post(f"{hq.url}/api/auth/logout", headers={"Authorization": f"Bearer {token}"})[0]


def refresh(hq: HQServer, refresh_token: str) -> dict[str, Any]:
    """POST /api/auth/refresh; returns the new pair (asserting 200)."""
    status, body = post(f"{hq.url}/api/auth/refresh", {"refresh_token": refresh_token})
    assert status == 200, body
    assert body is not None
    return body


def claims_of(token: str) -> dict[str, Any]:
    """The claims of a token, unverified (the test only reads what HQ issued)."""
    return jwt.decode(token, options={"verify_signature": False})


def craft(hq: HQServer, template: str, secret: bytes | None = None, typ: str | None = None, **changes: Any) -> str:
    """Re-sign HQ's own token with changed claims, with HQ's secret file unless ``secret`` is given."""
    claims = {**claims_of(template), "jti": uuid.uuid4().hex, **changes}
    header = jwt.get_unverified_header(template)
    key = secret if secret is not None else (hq.workdir / "hq.secret").read_bytes().strip()
    return jwt.encode(claims, key, algorithm="HS256", headers={"typ": typ or header["typ"], "kid": header["kid"]})


def until(moment: float) -> None:
    """Sleep until the wall clock reaches ``moment`` (epoch seconds)."""
    time.sleep(max(0.0, moment - time.time()))


def assert_refused(result: dict[str, Any], code: str) -> None:
    """A connect_error as the contract has it: ``Unauthorized: …`` and ``data.code``."""
    assert result["connected"] is False, result
    assert result["error"]["message"].startswith("Unauthorized: "), result
    assert result["error"]["data"] == {"code": code}, result


# --- the core path ------------------------------------------------------------------------------
def test_cli_agents_then_login_then_js_clients_exchange_on_missions(hq: HQServer, js: JSDriver) -> None:
    for codename, role in (("scout", "field-operative"), ("chief", "handler")):
        result = hq.cli("agents", "add", codename, "--role", role, "--password-stdin", stdin="a long passphrase 1\n")
        assert result.returncode == 0, result.stderr
    scout = hq.login("scout", "a long passphrase 1")
    chief = hq.login("chief", "a long passphrase 1")
    assert scout["agent"] == {"codename": "scout", "role": "field-operative"}

    assert js.connect("scout", hq.url, auth={"token": scout["access_token"]})["connected"]
    assert js.connect("chief", hq.url, auth={"token": chief["access_token"]})["connected"]
    assert js.emit("scout", "join", {"channel": "missions"}) == {"ok": True, "channel": "missions", "last_id": 0}
    assert js.emit("chief", "join", {"channel": "missions"})["ok"]

    assert js.emit("chief", "message", {"channel": "missions", "text": "rendezvous at dawn"}) == {"ok": True, "id": 1}
    received = js.wait("scout", "message")["args"][0]
    assert {k: received[k] for k in ("id", "channel", "from", "text")} == \
        {"id": 1, "channel": "missions", "from": "chief", "text": "rendezvous at dawn"}
    assert ISO_UTC.match(received["ts"]), received["ts"]

    # A field operative may read missions but not write it; the refusal keeps the socket.
    refused = js.emit("scout", "message", {"channel": "missions", "text": "me too"})
    assert refused["ok"] is False and refused["error"]["code"] == "forbidden"
    assert js.emit("chief", "message", {"channel": "missions", "text": "second"}) == {"ok": True, "id": 2}
    assert js.wait("scout", "message")["args"][0]["id"] == 2
    # The sender never gets its own messages back.
    assert js.events("chief", "message") == []
    assert js.state("scout")["connected"]


def test_join_and_history_shapes(shared_hq: HQServer, js: JSDriver) -> None:
    hank, fox, ana = (shared_hq.login(c)["access_token"] for c in ("hank", "fox", "ana"))
    for name, token in (("hank", hank), ("fox", fox), ("ana", ana)):
        assert js.connect(name, shared_hq.url, auth={"token": token})["connected"]
    before = js.emit("fox", "join", {"channel": "missions"})
    assert set(before) == {"ok", "channel", "last_id"} and before["ok"] and isinstance(before["last_id"], int)
    ids = [js.emit("hank", "message", {"channel": "missions", "text": f"h{i}"})["id"] for i in range(3)]
    assert ids == [before["last_id"] + 1, before["last_id"] + 2, before["last_id"] + 3]

    page = js.emit("fox", "history", {"channel": "missions", "after_id": before["last_id"]})
    assert page["ok"] is True
    assert [(m["id"], m["from"], m["text"], m["channel"]) for m in page["messages"]] == \
        [(ids[0], "hank", "h0", "missions"), (ids[1], "hank", "h1", "missions"), (ids[2], "hank", "h2", "missions")]
    assert all(set(m) == {"id", "channel", "from", "text", "ts"} and ISO_UTC.match(m["ts"]) for m in page["messages"])
    # History and live delivery carry the same shape.
    live = [js.wait("fox", "message")["args"][0] for _ in ids]
    assert live == page["messages"]
    limited = js.emit("fox", "history", {"channel": "missions", "after_id": before["last_id"], "limit": 2})
    assert [m["id"] for m in limited["messages"]] == ids[:2]

    for ack in (js.emit("ana", "join", {"channel": "missions"}), js.emit("ana", "history", {"channel": "missions"})):
        assert ack["ok"] is False and ack["error"]["code"] == "forbidden", ack
    for bad in ({}, {"channel": 5}, "missions"):
        ack = js.emit("fox", "join", bad)
        assert ack["ok"] is False and ack["error"]["code"] == "bad_request", (bad, ack)
    assert js.emit("fox", "join", {"channel": "no-such"})["error"]["code"] == "not_found"
    assert js.emit("fox", "history", {"channel": "missions", "limit": 501})["error"]["code"] == "bad_request"
    assert js.emit("fox", "leave", {"channel": "missions"}) == {"ok": True}
    assert js.state("fox")["connected"] and js.state("ana")["connected"]


def test_bare_string_message_goes_to_hq(shared_hq: HQServer, js: JSDriver) -> None:
    hank, fox = (shared_hq.login(c)["access_token"] for c in ("hank", "fox"))
    assert js.connect("hank", shared_hq.url, auth={"token": hank})["connected"]
    assert js.connect("fox", shared_hq.url, auth={"token": fox})["connected"]
    assert js.emit("hank", "join", {"channel": "hq"})["ok"]
    ack = js.emit("fox", "message", "situation report")
    assert ack["ok"] is True and isinstance(ack["id"], int)
    message = js.wait("hank", "message")["args"][0]
    assert (message["id"], message["channel"], message["from"], message["text"]) == \
        (ack["id"], "hq", "fox", "situation report")
    # fox may write hq but not read it.
    assert js.emit("fox", "history", {"channel": "hq"})["error"]["code"] == "forbidden"


# --- refusals at connect ------------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_crafted_tokens_are_refused_with_the_right_code(shared_hq: HQServer, js: JSDriver, transport: str) -> None:
    genuine = shared_hq.login("fox")["access_token"]
    now = int(time.time())
    # Control: the same crafting with HQ's secret and unchanged claims is accepted, so each
    # refusal below is due to the one thing it changes.
    control = craft(shared_hq, genuine)
    assert js.connect("control", shared_hq.url, transports=[transport], auth={"token": control})["connected"]
    cases = {
        "forged": (craft(shared_hq, genuine, secret=b"x" * 48), "token_invalid"),
        "expired": (craft(shared_hq, genuine, iat=now - 600, exp=now - 300), "token_expired"),
        "wrong_audience": (craft(shared_hq, genuine, aud="someone-else"), "token_invalid"),
        "wrong_issuer": (craft(shared_hq, genuine, iss="not-hq"), "token_invalid"),
        "not_an_access_token": (craft(shared_hq, genuine, typ="JWT"), "token_invalid"),
        "garbage": ("not.a.jwt", "token_invalid"),
    }
    for name, (token, code) in cases.items():
        result = js.connect(name, shared_hq.url, transports=[transport], auth={"token": token})
        assert_refused(result, code)
        # A refused client receives nothing.
        assert [e["event"] for e in js.events(name)] == ["connect_error"], name


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_no_token_is_token_missing(shared_hq: HQServer, js: JSDriver, transport: str) -> None:
    assert_refused(js.connect("nobody", shared_hq.url, transports=[transport]), "token_missing")
    assert_refused(js.connect("empty", shared_hq.url, transports=[transport], auth={}), "token_missing")


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("source", ["auth", "bearer", "cookie", "query"])
def test_token_sources_and_transports(shared_hq: HQServer, js: JSDriver, source: str, transport: str) -> None:
    token = shared_hq.login("hank")["access_token"]
    options: dict[str, Any] = {
        "auth": {"auth": {"token": token}},
        "bearer": {"extraHeaders": {"Authorization": f"Bearer {token}"}},
        "cookie": {"extraHeaders": {"Cookie": f"theme=dark; jwt={token}"}},
        "query": {"query": {"token": token}},
    }[source]
    result = js.connect("hank", shared_hq.url, transports=[transport], **options)
    assert result["connected"], result
    assert result["transport"] == transport
    assert js.emit("hank", "join", {"channel": "hq"})["ok"]
    ack = js.emit("hank", "message", {"channel": "hq", "text": f"via {source} over {transport}"})
    assert ack["ok"] is True
    # The same source with a bad token is refused: that source is the one being read.
    bad = {"auth": {"auth": {"token": "bad"}},
           "bearer": {"extraHeaders": {"Authorization": "Bearer bad"}},
           "cookie": {"extraHeaders": {"Cookie": "jwt=bad"}},
           "query": {"query": {"token": "bad"}}}[source]
    assert_refused(js.connect("bad", shared_hq.url, transports=[transport], **bad), "token_invalid")
    if source == "query":
        logs = shared_hq.log_path.read_text() + (shared_hq.workdir / "audit.log").read_text()
        assert token not in logs


def test_default_transports_upgrade_to_websocket(shared_hq: HQServer, js: JSDriver) -> None:
    token = shared_hq.login("fox")["access_token"]
    assert js.connect("fox", shared_hq.url, auth={"token": token})["connected"]
    deadline = time.monotonic() + 10
    while js.state("fox")["transport"] != "websocket" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert js.state("fox")["transport"] == "websocket"
    assert js.emit("fox", "join", {"channel": "missions"})["ok"]


def test_auth_token_is_judged_before_a_good_cookie(shared_hq: HQServer, js: JSDriver) -> None:
    token = shared_hq.login("fox")["access_token"]
    result = js.connect("fox", shared_hq.url, transports=["polling"], auth={"token": "bad"},
                        extraHeaders={"Cookie": f"jwt={token}"}, withCredentials=True)
    assert_refused(result, "token_invalid")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_origin_allow_list(shared_hq: HQServer, js: JSDriver, transport: str) -> None:
    token = shared_hq.login("fox")["access_token"]
    refused = js.connect("evil", shared_hq.url, transports=[transport], auth={"token": token},
                         extraHeaders={"Origin": "https://evil.example"})
    assert refused["connected"] is False, refused
    error = refused["error"]
    # Refused at the Engine.IO handshake (HTTP 400) or as a connect_error with origin_not_allowed.
    if error.get("data") is not None:
        assert error["data"] == {"code": "origin_not_allowed"}
    elif transport == "polling":
        assert error["description"] == 400, error
    else:
        assert error["message"] == "websocket error" and "400" in str(error.get("description")), error
    assert [e["event"] for e in js.events("evil")] == ["connect_error"]

    allowed = js.connect("home", shared_hq.url, transports=[transport], auth={"token": token},
                         extraHeaders={"Origin": f"http://localhost:{shared_hq.port}"})
    assert allowed["connected"], allowed
    assert js.emit("home", "join", {"channel": "missions"})["ok"]


# --- token lifecycle on a live JS socket (issue 3) ----------------------------------------------
def test_token_expiring_then_session_ended(hq_factory: Callable[..., HQServer], js: JSDriver) -> None:
    # No leeway, so that right after expiry the same token is refused at connect as well.
    hq = hq_factory(auth={"access_ttl": 4, "expiry_warning": 2, "leeway": 0})
    token = hq.login("fox")["access_token"]
    exp = claims_of(token)["exp"]
    assert js.connect("fox", hq.url, auth={"token": token})["connected"]
    assert js.emit("fox", "join", {"channel": "missions"})["ok"]
    warning = js.wait("fox", "token_expiring", timeout=15)
    assert warning["args"] == [{"exp": exp}]
    ended = js.wait("fox", "session_ended", timeout=15)
    assert ended["args"] == [{"reason": "token_expired"}]
    gone = js.wait("fox", "disconnect", timeout=10)
    assert gone["args"][0] == "io server disconnect"
    # The end comes at expiry, not before it (1 s allowance for timer jitter), and after the warning.
    assert warning["t"] <= ended["t"] <= gone["t"]
    assert ended["t"] >= exp * 1000 - 1000
    assert not js.state("fox")["connected"]
    # The expired token is refused at connect too.
    assert_refused(js.connect("again", hq.url, auth={"token": token}), "token_expired")


@pytest.mark.parametrize("fresh_from", ["refresh", "login"])
def test_reauth_extends_the_live_connection(hq_factory: Callable[..., HQServer], js: JSDriver,
                                            fresh_from: str) -> None:
    hq = hq_factory(auth={"access_ttl": 6, "expiry_warning": 3})
    pair = hq.login("fox")
    old_exp = claims_of(pair["access_token"])["exp"]
    assert js.connect("fox", hq.url, auth={"token": pair["access_token"]})["connected"]
    assert js.wait("fox", "token_expiring", timeout=15)["args"] == [{"exp": old_exp}]

    fresh = refresh(hq, pair["refresh_token"]) if fresh_from == "refresh" else hq.login("fox")
    new_exp = claims_of(fresh["access_token"])["exp"]
    assert new_exp > old_exp
    assert js.emit("fox", "reauth", {"token": fresh["access_token"]}) == {"ok": True, "exp": new_exp}

    # Past the old expiry: still connected, no session_ended, events still answered.
    until(old_exp + 1.5)
    assert js.events("fox", "session_ended") == []
    assert js.state("fox")["connected"]
    assert js.emit("fox", "join", {"channel": "missions"})["ok"]
    # The new expiry is the one in force now.
    assert js.wait("fox", "token_expiring", timeout=15)["args"] == [{"exp": new_exp}]
    ended = js.wait("fox", "session_ended", timeout=15)
    assert ended["args"] == [{"reason": "token_expired"}]
    assert ended["t"] >= new_exp * 1000 - 1000
    js.wait("fox", "disconnect", timeout=10)


def test_refused_reauth_keeps_the_old_expiry(hq_factory: Callable[..., HQServer], js: JSDriver) -> None:
    hq = hq_factory(auth={"access_ttl": 6, "expiry_warning": 3})
    token = hq.login("fox")["access_token"]
    exp = claims_of(token)["exp"]
    assert js.connect("fox", hq.url, auth={"token": token})["connected"]
    js.wait("fox", "token_expiring", timeout=15)

    # Tokens obtained now expire about 3 s after fox's: none of them may extend it.
    other_agent = hq.login("hank")["access_token"]
    other_session = hq.login("fox")["access_token"]
    assert logout(hq, other_session) == 204
    refusals = {
        "other agent": (other_agent, "token_invalid"),
        "revoked session": (other_session, "token_revoked"),
        "forged": (craft(hq, other_session, secret=b"y" * 48), "token_invalid"),
    }
    for name, (bad, code) in refusals.items():
        ack = js.emit("fox", "reauth", {"token": bad})
        assert ack["ok"] is False and ack["error"]["code"] == code, (name, ack)
    assert js.emit("fox", "reauth", {})["error"]["code"] == "bad_request"
    assert js.state("fox")["connected"]

    ended = js.wait("fox", "session_ended", timeout=15)
    assert ended["args"] == [{"reason": "token_expired"}]
    # It ended at the old expiry: before the refused tokens' expiry (3 s later).
    later = claims_of(other_agent)["exp"]
    assert later > exp
    assert ended["t"] < later * 1000, (ended["t"], exp, later)
    assert [e["args"] for e in js.events("fox", "token_expiring")] == [[{"exp": exp}]]
    js.wait("fox", "disconnect", timeout=10)


def test_logout_ends_the_js_socket(shared_hq: HQServer, fresh_agent: str, js: JSDriver) -> None:
    hq = shared_hq  # the logout ends sessions of this test's own agent only
    token = hq.login(fresh_agent)["access_token"]
    other = hq.login(fresh_agent)["access_token"]
    assert js.connect("fox", hq.url, auth={"token": token})["connected"]
    assert js.connect("other", hq.url, auth={"token": other})["connected"]
    assert js.emit("fox", "join", {"channel": "missions"})["ok"]
    assert logout(hq, token) == 204
    logged_out_at = time.time()
    ended = js.wait("fox", "session_ended", timeout=10)
    assert ended["args"] == [{"reason": "logged_out"}]
    gone = js.wait("fox", "disconnect", timeout=10)
    assert gone["args"][0] == "io server disconnect"
    print(f"\nlogout response -> JS socket disconnect: {(gone['t'] / 1000 - logged_out_at) * 1000:.0f} ms "
          f"(session_ended at {(ended['t'] / 1000 - logged_out_at) * 1000:.0f} ms)")
    # Only that login session ended; the token is dead at connect as well.
    assert js.events("other", "session_ended") == [] and js.state("other")["connected"]
    assert_refused(js.connect("again", hq.url, auth={"token": token}), "token_revoked")


def test_cli_disable_in_another_process_ends_the_js_socket(shared_hq: HQServer, fresh_agent: str, js: JSDriver) -> None:
    hq = shared_hq  # only this test's own agent is disabled
    token = hq.login(fresh_agent)["access_token"]
    hank = hq.login("hank")["access_token"]
    assert js.connect("fox", hq.url, transports=["websocket"], auth={"token": token})["connected"]
    assert js.connect("hank", hq.url, auth={"token": hank})["connected"]
    launched_at = time.time()
    result = run_cli(hq.config, "agents", "disable", fresh_agent)  # another process: HQ learns it from the store
    disabled_at = time.time()
    assert result.returncode == 0, result.stderr
    ended = js.wait("fox", "session_ended", timeout=10)
    assert ended["args"] == [{"reason": "agent_disabled"}]
    gone = js.wait("fox", "disconnect", timeout=10)
    assert gone["args"][0] == "io server disconnect"
    # The CLI writes the revocation, then takes a while to exit; HQ may end the socket in between.
    print(f"\nagents disable -> JS socket disconnect: {(gone['t'] / 1000 - disabled_at) * 1000:.0f} ms after "
          f"the CLI exited, {(gone['t'] / 1000 - launched_at) * 1000:.0f} ms after it was launched")
    assert js.events("hank", "session_ended") == [] and js.state("hank")["connected"]
    assert_refused(js.connect("again", hq.url, auth={"token": token}), "agent_disabled")
