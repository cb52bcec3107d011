"""Expiry, reauth and revocation on live sockets, including revocation from another process."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import jwt
import pytest

from .sio import RecordingClient
from .support import HQServer


async def test_expiry_warns_then_ends_the_socket(hq_factory) -> None:
    hq = hq_factory(auth={"access_ttl": 3, "expiry_warning": 2, "leeway": 0})
    token = hq.login("fox")["access_token"]
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    client = await RecordingClient().connect(hq.url, token)
    assert (await client.wait_for("token_expiring"))[0] == {"exp": exp}
    assert (await client.wait_for("session_ended"))[0] == {"reason": "token_expired"}
    await client.wait_disconnected()
    assert time.time() >= exp - 0.5


async def test_reauth_extends_the_connection(hq_factory) -> None:
    hq = hq_factory(auth={"access_ttl": 3, "expiry_warning": 1, "leeway": 0})
    client = await RecordingClient().connect(hq.url, hq.login("fox")["access_token"])
    for _ in range(2):
        await client.wait_for("token_expiring", count=len(client.received("token_expiring")) + 1)
        fresh = hq.login("fox")["access_token"]
        ack = await client.call("reauth", {"token": fresh})
        assert ack == {"ok": True, "exp": jwt.decode(fresh, options={"verify_signature": False})["exp"]}
    assert client.sio.connected and not client.received("session_ended")
    assert (await client.call("join", {"channel": "missions"}))["ok"]
    await client.close()


async def test_reauth_refusals_keep_the_old_expiry(hq_factory) -> None:
    hq = hq_factory(auth={"access_ttl": 4, "expiry_warning": 1, "leeway": 0})
    client = await RecordingClient().connect(hq.url, hq.login("fox")["access_token"])
    other = hq.login("hank")["access_token"]
    revoked = hq.login("fox")
    request = urllib.request.Request(f"{hq.url}/api/auth/logout", method="POST",
                                     headers={"Authorization": f"Bearer {revoked['access_token']}"})
    urllib.request.urlopen(request).close()
    for payload, code in ((None, "bad_request"), ({"token": 5}, "bad_request"), ({"token": other}, "token_invalid"),
                          ({"token": "not.a.jwt"}, "token_invalid"), ({"token": revoked["access_token"]}, "token_revoked")):
        ack = await client.call("reauth", payload)
        assert ack["ok"] is False and ack["error"]["code"] == code, (payload, ack)
    assert (await client.wait_for("session_ended"))[0] == {"reason": "token_expired"}
    await client.close()


async def test_disable_from_another_process_ends_sockets(hq: HQServer) -> None:
    fox_token = hq.login("fox")["access_token"]
    fox = await RecordingClient().connect(hq.url, fox_token)
    hank = await RecordingClient().connect(hq.url, hq.login("hank")["access_token"])
    started = time.monotonic()
    result = hq.cli("agents", "disable", "fox")
    done = time.monotonic()
    assert result.returncode == 0, result.stderr
    assert (await fox.wait_for("session_ended"))[0] == {"reason": "agent_disabled"}
    ended = await fox.wait_disconnected()
    print(f"agents disable in another process: socket ended {1000 * (ended - started):.0f} ms after the CLI "
          f"started (the CLI itself ran {1000 * (done - started):.0f} ms)")
    assert hank.sio.connected and not hank.received("session_ended")
    refused = RecordingClient()
    with pytest.raises(Exception):
        await refused.connect(hq.url, fox_token)
    assert refused.connect_error["data"] == {"code": "agent_disabled"}
    with pytest.raises(urllib.error.HTTPError) as login:
        hq.login("fox")
    assert login.value.code == 403
    await hank.close()


async def test_passwd_from_another_process_ends_sessions(hq: HQServer) -> None:
    token = hq.login("fox")["access_token"]
    fox = await RecordingClient().connect(hq.url, token)
    result = hq.cli("agents", "passwd", "fox", "--password-stdin", stdin="a brand new password\n")
    assert result.returncode == 0, result.stderr
    assert (await fox.wait_for("session_ended"))[0] == {"reason": "revoked"}
    again = RecordingClient()
    with pytest.raises(Exception):
        await again.connect(hq.url, token)
    assert again.connect_error["data"] == {"code": "token_revoked"}
    assert hq.login("fox", "a brand new password")["agent"]["codename"] == "fox"


async def test_role_change_from_another_process_takes_effect_at_once(hq: HQServer) -> None:
    token = hq.login("hank")["access_token"]
    hank = await RecordingClient().connect(hq.url, token)
    assert (await hank.call("message", {"channel": "missions", "text": "as handler"}))["ok"]
    result = hq.cli("agents", "role", "hank", "--role", "analyst")
    assert result.returncode == 0, result.stderr
    assert (await hank.wait_for("session_ended"))[0] == {"reason": "revoked"}
    again = RecordingClient()
    with pytest.raises(Exception):
        await again.connect(hq.url, token)
    assert again.connect_error["data"] == {"code": "token_revoked"}
    demoted = await RecordingClient().connect(hq.url, hq.login("hank")["access_token"])
    ack = await demoted.call("message", {"channel": "missions", "text": "as analyst"})
    assert ack["ok"] is False and ack["error"]["code"] == "forbidden"
    await demoted.close()
    bad = hq.cli("agents", "role", "hank", "--role", "emperor")
    assert bad.returncode == 2 and "unknown role" in bad.stderr
