"""The audit log (§6): one JSON line per connection and login event, with who, from where, over what,
and never a token or a password, whatever a client sends."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
import socketio

from .sio import RecordingClient
from .support import PASSWORD, HQServer

USER_AGENT = "AuditProbe/1.0 (+tests)"

# Every secret a client could send, in every place it could send it.
WRONG_PASSWORDS = [
    "Wr0ng-Secret-Attempt-1",
    "pässwörd-ünïcode-секрет-密码",
    "L" * 1024,
    "X9" * 3000,
    "quote\"back\\slash\nnewline-secret",
]
PASSWORD_AS_CODENAME = "Sup3rSecretPassw0rd"  # looks like a codename: the classic typo in the wrong field
NEW_PASSWORD = "N3w-Passw0rd-From-CLI"


def http(hq: HQServer, path: str, body: Any = None, raw: bytes | None = None, headers: dict[str, str] | None = None,
         method: str = "POST") -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(f"{hq.url}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json", "User-Agent": USER_AGENT,
                                              **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            text = response.read()
            return response.status, json.loads(text) if text else None
    except urllib.error.HTTPError as exc:
        with exc:
            text = exc.read()
            return exc.code, json.loads(text) if text else None


def login(hq: HQServer, username: Any, password: Any) -> tuple[int, Any]:
    return http(hq, "/api/auth/login", {"username": username, "password": password})


async def try_connect(hq: HQServer, token: str | None = None, headers: dict[str, str] | None = None
                      ) -> RecordingClient:
    client = RecordingClient()
    try:
        await client.connect(hq.url, token, transports=["websocket"], headers={"User-Agent": USER_AGENT, **(headers or {})})
    except socketio.exceptions.ConnectionError:
        pass
    return client


def secret_fragments(secrets: list[str]) -> list[str]:
    """Each secret and, for long ones, pieces of it: a truncated copy must not slip through either."""
    fragments = []
    for secret in secrets:
        fragments.append(secret[:64])
        if len(secret) > 24:
            fragments += [secret[i:i + 24] for i in range(0, len(secret) - 24, 12)]
    return fragments


@pytest.fixture
def audited(hq_factory) -> HQServer:
    # refresh_grace 0: the reuse below is refused at once (the grace window has its own tests).
    return hq_factory(admin={"enabled": True}, auth={"access_ttl": 60, "expiry_warning": 1, "refresh_grace": 0},
                      limits={"login_failures_per_codename": 50, "login_failures_per_address": 100})


@pytest.mark.real_process  # [admin] enabled: python-socketio's instrumentation patches engineio for the whole process
async def test_no_token_or_password_ever_reaches_the_audit_log(audited: HQServer) -> None:
    hq = audited
    secrets: list[str] = [PASSWORD, PASSWORD_AS_CODENAME, NEW_PASSWORD, *WRONG_PASSWORDS]

    # Logins: right, wrong, a password in the codename field, odd and malformed bodies.
    status, pair = login(hq, "fox", PASSWORD)
    assert status == 200
    secrets += [pair["access_token"], pair["refresh_token"]]
    for wrong in WRONG_PASSWORDS:
        assert login(hq, "fox", wrong)[0] == 401
    assert login(hq, PASSWORD_AS_CODENAME, PASSWORD_AS_CODENAME)[0] == 401
    assert login(hq, PASSWORD, PASSWORD)[0] == 401
    assert login(hq, pair["access_token"], PASSWORD)[0] == 401  # a token pasted as codename
    assert login(hq, "fox", 12345)[0] == 400
    assert http(hq, "/api/auth/login", raw=b'{"username": "fox", "password": "Wr0ng-Secret-Attempt-1"')[0] == 400

    # Refresh: a good one, the same one again (reuse revokes), and garbage.
    status, second = http(hq, "/api/auth/refresh", {"refresh_token": pair["refresh_token"]})
    assert status == 200
    secrets += [second["access_token"], second["refresh_token"]]
    assert http(hq, "/api/auth/refresh", {"refresh_token": pair["refresh_token"]})[1]["error"]["code"] == "token_reused"
    assert http(hq, "/api/auth/refresh", {"refresh_token": "refresh-garbage-Secret-0123456789abcdef"})[0] == 401
    secrets.append("refresh-garbage-Secret-0123456789abcdef")

    # Sockets: the token in each place a client may put it, good and bad, and reauth.
    _, live = login(hq, "hank", PASSWORD)
    _, fresh = login(hq, "hank", PASSWORD)
    secrets += [live["access_token"], live["refresh_token"], fresh["access_token"], fresh["refresh_token"]]
    forged = live["access_token"][:-6] + "AAAAAA"
    secrets.append(forged)
    accepted = [
        await try_connect(hq, token=live["access_token"]),
        await try_connect(hq, headers={"Cookie": f"jwt={live['access_token']}"}),
        await try_connect(hq, headers={"Authorization": f"Bearer {live['access_token']}"}),
    ]
    query = RecordingClient()
    await query.sio.connect(f"{hq.url}?token={live['access_token']}", transports=["websocket"], wait_timeout=10)
    refused = [await try_connect(hq, token=forged), await try_connect(hq, token=second["access_token"]),
               await try_connect(hq, token="")]
    assert all(c.sio.connected for c in accepted) and query.sio.connected
    assert [c.connect_error["data"]["code"] for c in refused] == ["token_invalid", "token_revoked", "token_missing"]
    assert (await accepted[0].call("reauth", {"token": fresh["access_token"]}))["ok"]
    assert (await accepted[0].call("reauth", {"token": forged}))["error"]["code"] == "token_invalid"

    # A token pasted into the user agent is not copied into the log either.
    pasted = await try_connect(hq, token=live["access_token"],
                               headers={"User-Agent": f"curl/8 {live['access_token']} {live['refresh_token']}"})

    # Admin UI logins, and the operator changing a password (which revokes from another process).
    admin = socketio.AsyncClient(reconnection=False)
    await admin.connect(hq.url, namespaces=["/admin"], auth={"username": "dora", "password": PASSWORD},
                        transports=["websocket"], wait_timeout=10)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await socketio.AsyncClient(reconnection=False).connect(
            hq.url, namespaces=["/admin"], auth={"username": "dora", "password": WRONG_PASSWORDS[0]},
            transports=["websocket"], wait_timeout=10)
    assert hq.cli("agents", "passwd", "hank", "--password-stdin", stdin=NEW_PASSWORD + "\n").returncode == 0
    await accepted[1].wait_for("session_ended")

    # Logout.
    _, last = login(hq, "dora", PASSWORD)
    secrets += [last["access_token"], last["refresh_token"]]
    assert http(hq, "/api/auth/logout", headers={"Authorization": f"Bearer {last['access_token']}"})[0] == 204

    for client in [*accepted, *refused, pasted]:
        await client.close()
    await admin.disconnect()
    await query.sio.disconnect()

    audit = (hq.workdir / "audit.log").read_text(encoding="utf-8")
    assert len(audit.splitlines()) > 30
    for fragment in secret_fragments(secrets):
        assert fragment not in audit, f"a secret reached the audit log: {fragment[:12]}…"
    # The same holds for the raw JSON escaping of non-ASCII secrets.
    assert json.dumps(WRONG_PASSWORDS[1])[1:-1] not in audit
    # And for the server's own log (access log included: the query's token is redacted there).
    server_log = hq.log_path.read_text(encoding="utf-8", errors="replace")
    assert "token=[redacted]" in server_log
    for fragment in secret_fragments(secrets):
        assert fragment not in server_log, f"a secret reached the server log: {fragment[:12]}…"


@pytest.mark.real_process  # [admin] enabled: python-socketio's instrumentation patches engineio for the whole process
async def test_every_line_says_who_from_where_over_what(audited: HQServer) -> None:
    hq = audited
    _, pair = login(hq, "fox", PASSWORD)
    assert login(hq, "fox", "wrong password entirely")[0] == 401
    assert login(hq, "nobody", "wrong password entirely")[0] == 401
    client = await try_connect(hq, token=pair["access_token"])
    refused = await try_connect(hq, token="nonsense")
    http(hq, "/api/auth/logout", headers={"Authorization": f"Bearer {pair['access_token']}"})
    await client.wait_for("session_ended")
    await client.wait_disconnected()
    await client.close()
    await refused.close()

    lines = hq.audit_lines()
    by_event: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        assert line["ts"].endswith("Z")
        by_event.setdefault(line["event"], []).append(line)
    common = {"address": "127.0.0.1", "user_agent": USER_AGENT}

    succeeded = by_event["login_succeeded"][0]
    assert succeeded.items() >= {"codename": "fox", "transport": "http", **common}.items()
    failed = by_event["login_failed"]
    assert [(f["codename"], f["code"], f["transport"]) for f in failed] == [
        ("fox", "invalid_credentials", "http"), ("<unknown>", "invalid_credentials", "http")]
    assert all(f.items() >= common.items() for f in failed)

    (accepted,) = by_event["connection_accepted"]
    assert accepted.items() >= {"codename": "fox", "transport": "websocket", **common}.items()
    (refusal,) = by_event["connection_refused"]
    assert refusal.items() >= {"code": "token_invalid", "transport": "websocket", **common}.items()
    assert "codename" not in refusal

    (revoked,) = by_event["session_revoked"]
    assert revoked.items() >= {"codename": "fox", "reason": "logged_out", "transport": "http", **common}.items()
    (ended,) = by_event["connection_ended"]
    assert ended.items() >= {"codename": "fox", "reason": "logged_out", "transport": "websocket", **common}.items()


async def test_the_destination_is_configurable(hq_factory, tmp_path) -> None:
    target = tmp_path / "elsewhere" / "hq-audit.jsonl"
    hq = hq_factory(agents={"dora": "director"}, audit={"path": str(target)})  # no first-start agent
    hq.add_agent("fox", "field-operative")  # the CLI, beside the serving HQ
    login(hq, "fox", PASSWORD)
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    # The CLI's `agents add` is audited too: who (the CLI) added whom.
    assert [line["event"] for line in lines] == ["admin_action", "login_succeeded"]
    assert lines[0].items() >= {"actor": "cli", "interface": "cli", "action": "add", "target": "fox",
                                "role": "field-operative"}.items()
    assert not (hq.workdir / "audit.log").exists()
