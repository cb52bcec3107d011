"""Expiry, reauth and revocation on live sockets, including revocation from another process.

The reauth tests run HQ in-process on a manual clock (tests/inprocess.py): they move it past
warnings and expiries instead of sleeping through second-long tokens.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import aiohttp
import jwt
import pytest

from .cli import run_cli
from .inprocess import ClockedHQFactory, clocked_hq  # noqa: F401  (the in-process HQ on a manual clock)
from .sio import RecordingClient
from .support import HQServer


async def test_expiry_warns_then_ends_the_socket(hq_factory) -> None:
    # The real-clock end-to-end test of socket expiry (a real process, real seconds); the others
    # move a manual clock instead (tests/inprocess.py).
    hq = hq_factory(auth={"access_ttl": 3, "expiry_warning": 2, "leeway": 0})
    token = hq.login("fox")["access_token"]
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    client = await RecordingClient().connect(hq.url, token)
    assert (await client.wait_for("token_expiring"))[0] == {"exp": exp}
    assert (await client.wait_for("session_ended"))[0] == {"reason": "token_expired"}
    await client.wait_disconnected()
    assert time.time() >= exp - 0.5


async def test_reauth_extends_the_connection(clocked_hq: ClockedHQFactory) -> None:
    hq = await clocked_hq(auth={"access_ttl": 30, "expiry_warning": 10, "leeway": 0})
    async with aiohttp.ClientSession() as http:
        client = await RecordingClient().connect(hq.url, (await hq.login(http, "fox"))["access_token"])
        for warnings in (1, 2):
            hq.clock.advance(20)  # to the warning, 10 s before the current token's exp
            await client.wait_for("token_expiring", count=warnings)
            fresh = (await hq.login(http, "fox"))["access_token"]
            ack = await client.call("reauth", {"token": fresh})
            assert ack == {"ok": True, "exp": jwt.decode(fresh, options={"verify_signature": False})["exp"]}
        # 40 s in: the first token expired 10 s ago, the socket lives on the third.
        assert client.sio.connected and not client.received("session_ended")
        assert (await client.call("join", {"channel": "missions"}))["ok"]
        await client.close()


async def test_reauth_refusals_keep_the_old_expiry(clocked_hq: ClockedHQFactory) -> None:
    hq = await clocked_hq(auth={"access_ttl": 40, "expiry_warning": 10, "leeway": 0})
    async with aiohttp.ClientSession() as http:
        client = await RecordingClient().connect(hq.url, (await hq.login(http, "fox"))["access_token"])
        other = (await hq.login(http, "hank"))["access_token"]
        revoked = await hq.login(http, "fox")
        status, _ = await hq.post(http, "/api/auth/logout",
                                  headers={"Authorization": f"Bearer {revoked['access_token']}"})
        assert status == 204
        for payload, code in ((None, "bad_request"), ({"token": 5}, "bad_request"), ({"token": other}, "token_invalid"),
                              ({"token": "not.a.jwt"}, "token_invalid"),
                              ({"token": revoked["access_token"]}, "token_revoked")):
            ack = await client.call("reauth", payload)
            assert ack["ok"] is False and ack["error"]["code"] == code, (payload, ack)
        hq.clock.advance(40)
        assert (await client.wait_for("session_ended"))[0] == {"reason": "token_expired"}
        await client.close()


async def test_disable_from_another_process_ends_sockets(hq: HQServer) -> None:
    fox_token = hq.login("fox")["access_token"]
    fox = await RecordingClient().connect(hq.url, fox_token)
    hank = await RecordingClient().connect(hq.url, hq.login("hank")["access_token"])
    started = time.monotonic()
    result = run_cli(hq.config, "agents", "disable", "fox")
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
    result = run_cli(hq.config, "agents", "passwd", "fox", "--password-stdin", stdin="a brand new password\n")
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
    result = run_cli(hq.config, "agents", "role", "hank", "--role", "analyst")
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
