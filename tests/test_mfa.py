"""The TOTP second factor (issue 12): enrolment, login with codes, replays, recovery codes, limits,
the enrolment-only token, the CLI and the directors' routes, and secrets that never appear in clear.

Codes are computed here with pyotp from the secret HQ hands out at enrolment, as an authenticator
app would. Every server runs with HQ's default policy (``mfa_required = ["director"]``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import aiohttp
import pyotp
import pytest
import socketio

from hq.auth.mfa import (MfaKeyError, OtpRejected, SecondFactor, SecretBox, hash_recovery_code, load_or_create_key,
                         new_recovery_codes, new_totp_secret, step_at)
from hq.config import ConfigError, load_settings
from hq.store import Agent, Store, open_store

from .services import create_database, drop_database
from .sio import RecordingClient
from .support import PASSWORD, HQServer, make_server
from .terminal import run_on_terminal
from .test_admin_ui import AdminClient
from .threaded_hq import make_in_process_server

NEW_PASSWORD = "a fresh password for mfa"
# HQ's default policy, and a per-address limit no test here reaches (each test uses its own codenames).
MFA_DEFAULTS: dict[str, dict[str, Any]] = {"auth": {"mfa_required": ["director"]},
                                           "limits": {"login_failures_per_address": 1000},
                                           "admin": {"enabled": True}}
AGENTS = {"dora": "director", "eve": "director", "dex": "director", "pat": "director", "fox": "field-operative",
          "gus": "handler", "rho": "handler", "lim": "handler", "hank": "handler", "cli1": "handler"}
RECOVERY_SHAPE = re.compile(r"^[0-9a-hjkmnp-tv-z]{4}(-[0-9a-hjkmnp-tv-z]{4}){3}$")
#: Every secret and recovery code HQ handed out in this module: none may be found in clear anywhere.
HANDED_OUT: list[str] = []
#: dora's recovery codes, from the self-enrolment test, for the directors' test.
DORA_CODES: list[str] = []
DORA_SECRET: list[str] = []


# -- helpers ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HQServer]:
    """One HQ with the default MFA policy for the whole module."""
    server = make_server(tmp_path_factory.mktemp("mfa"), AGENTS, **MFA_DEFAULTS).start()
    yield server
    server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(http: aiohttp.ClientSession, method: str, url: str, body: Any = None, token: str | None = None,
               headers: dict[str, str] | None = None) -> tuple[int, Any, aiohttp.ClientResponse]:
    """One request; the JSON body (or None)."""
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    async with http.request(method, url, json=body, headers=sent) as response:
        text = await response.text()
        return response.status, (json.loads(text) if text else None), response


async def login(http: aiohttp.ClientSession, hq: HQServer, codename: str, password: str = PASSWORD,
                otp: Any = None, **extra: Any) -> tuple[int, Any]:
    body = {"username": codename, "password": password, **extra}
    if otp is not None:
        body["otp"] = otp
    status, answer, _ = await call(http, "POST", f"{hq.url}/api/auth/login", body)
    return status, answer


def code_at(secret: str, offset_steps: int = 0) -> str:
    """The code an authenticator app shows ``offset_steps`` steps from now."""
    return pyotp.TOTP(secret).at(time.time() + 30 * offset_steps)


async def enrol(http: aiohttp.ClientSession, hq: HQServer, codename: str) -> tuple[str, list[str], dict[str, Any]]:
    """Enrol ``codename`` through the self-enrolment API; its secret, recovery codes and the confirm body.

    The code used to confirm is recorded as used: the next login needs a later one (``code_at(s, 1)``).
    """
    status, body = await login(http, hq, codename)
    assert status == 200, body
    token = body["access_token"]
    status, enrollment, _ = await call(http, "POST", f"{hq.url}/api/auth/mfa/enroll", {"password": PASSWORD}, token)
    assert status == 200, enrollment
    secret = enrollment["secret"]
    HANDED_OUT.append(secret)
    status, confirmed, _ = await call(http, "POST", f"{hq.url}/api/auth/mfa/confirm", {"code": code_at(secret)}, token)
    assert status == 200, confirmed
    HANDED_OUT.extend(confirmed["recovery_codes"])
    return secret, confirmed["recovery_codes"], confirmed


# -- configuration ---------------------------------------------------------------------------------------
def test_policy_and_key_settings(tmp_path: Path) -> None:
    default = load_settings(None, environ={})
    assert default.auth.mfa_required == ("director",) and default.mfa_roles == {"director"}
    assert load_settings(None, environ={"HQ_AUTH_MFA_REQUIRED": "[]"}).mfa_roles == frozenset()
    both = load_settings(None, environ={"HQ_AUTH_MFA_REQUIRED": '["handler", "director"]'})
    assert both.mfa_roles == {"handler", "director"}
    with pytest.raises(ConfigError) as typo:  # a misspelt role must not silently exempt anyone
        load_settings(None, environ={"HQ_AUTH_MFA_REQUIRED": '["directr"]'})
    assert typo.value.key == "auth.mfa_required"
    # Levels of one's own: the default names no level there, so it requires nothing (and is no error).
    custom = tmp_path / "levels.toml"
    custom.write_text('[clearance]\nlevels = ["guest", "chief"]\n[channels.ops]\nread = "guest"\nwrite = "chief"\n')
    assert load_settings(custom, environ={}).mfa_roles == frozenset()
    keyed = tmp_path / "keyed.toml"
    keyed.write_text('[auth]\nsecret_file = "keys/hq.secret"\n')
    assert load_settings(keyed, environ={}).mfa_key_path == tmp_path / "keys" / "hq.mfa-key"
    keyed.write_text('[auth]\nmfa_key_file = "/srv/shared/mfa.key"\nmfa_issuer = "HQ staging"\n')
    assert load_settings(keyed, environ={}).mfa_key_path == Path("/srv/shared/mfa.key")
    with pytest.raises(ConfigError):
        load_settings(None, environ={"HQ_AUTH_MFA_ISSUER": "a:b"})


# -- the key, the sealed secrets and the codes, on a real store ----------------------------------------
def test_key_file_is_made_owner_only_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "hq.mfa-key"
    key = load_or_create_key(path)
    assert len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == key  # reused, not replaced
    path.write_text("too short\n")
    with pytest.raises(ValueError, match="32 bytes"):
        load_or_create_key(path)


def test_sealed_secret_opens_only_with_its_key_and_codename(tmp_path: Path) -> None:
    box = SecretBox.from_file(tmp_path / "a.key")
    secret = new_totp_secret()
    sealed = box.seal(secret, "Dora")
    assert secret not in sealed and box.open(sealed, "dora") == secret
    with pytest.raises(MfaKeyError):
        box.open(sealed, "eve")  # moved to another agent's row
    with pytest.raises(MfaKeyError):
        SecretBox.from_file(tmp_path / "b.key").open(sealed, "dora")  # another HQ's key
    with pytest.raises(MfaKeyError):
        box.open("v1:not base64!", "dora")


def test_recovery_codes_are_distinct_and_normalised() -> None:
    codes = new_recovery_codes()
    assert len(codes) == 10 == len(set(codes)) and all(RECOVERY_SHAPE.match(c) for c in codes)
    code = codes[0]
    assert hash_recovery_code(code.upper().replace("-", " ")) == hash_recovery_code(code)
    assert code.replace("-", "") not in hash_recovery_code(code)


@pytest.fixture(params=["sqlite", "postgresql"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Store, Store]]:
    """Two stores on one database: two HQ processes (PostgreSQL: two cluster nodes)."""
    url = f"sqlite:///{tmp_path / 'mfa.sqlite3'}" if request.param == "sqlite" else await create_database()
    pair = (open_store(url), open_store(url))
    for store in pair:
        await store.open()
    yield pair
    for store in pair:
        await store.close()
    if request.param == "postgresql":
        await drop_database(url)


async def enrolled_factor(store: Store, box: SecretBox, codename: str, confirmed_step: int) -> tuple[SecondFactor, Agent, str]:
    agent = await store.add_agent(codename, "director", "not a real hash")
    secret = new_totp_secret()
    sealed = box.seal(secret, codename)
    assert await store.begin_mfa(codename, sealed)
    assert await store.confirm_mfa(codename, sealed, confirmed_step, [hash_recovery_code(c) for c in new_recovery_codes()])
    return SecondFactor(store, box, "HQ", frozenset({"director"})), agent, secret


async def test_clock_edges_previous_and_next_step_accepted_two_off_refused(stores: tuple[Store, Store],
                                                                          tmp_path: Path) -> None:
    store = stores[0]
    box = SecretBox.from_file(tmp_path / "mfa.key")
    now = time.time()
    current = step_at(now)
    totp = lambda secret, step: pyotp.TOTP(secret).generate_otp(step)  # noqa: E731
    factor, agent, secret = await enrolled_factor(store, box, "edge", current - 10)
    record = await store.get_mfa("edge")
    for refused in (current - 2, current + 2):
        with pytest.raises(OtpRejected):
            await factor.check(agent, record, totp(secret, refused), now)
    assert await factor.check(agent, record, totp(secret, current - 1), now) == "totp"  # a slow phone clock
    with pytest.raises(OtpRejected):  # replay in the same step
        await factor.check(agent, record, totp(secret, current - 1), now)
    assert await factor.check(agent, record, totp(secret, current + 1), now) == "totp"  # a fast one
    with pytest.raises(OtpRejected):  # older than the last step used: refused although within the window
        await factor.check(agent, record, totp(secret, current), now)
    assert (await store.get_mfa("EDGE")).last_step == current + 1


async def test_a_step_and_a_recovery_code_are_good_once_across_nodes(stores: tuple[Store, Store],
                                                                    tmp_path: Path) -> None:
    box = SecretBox.from_file(tmp_path / "mfa.key")
    current = step_at(time.time())
    await enrolled_factor(stores[0], box, "race", current - 5)
    # Both "nodes" accept the same code at the same moment: the store lets exactly one through.
    attempts = [stores[i % 2].use_totp_step("race", current) for i in range(10)]
    assert sorted(await asyncio.gather(*attempts)) == [False] * 9 + [True]
    codes = new_recovery_codes()
    record = await stores[0].get_mfa("race")
    assert await stores[0].reset_mfa("race") and await stores[1].get_mfa("race") is None
    assert await stores[0].begin_mfa("race", record.secret_box)
    assert await stores[1].confirm_mfa("race", record.secret_box, current, [hash_recovery_code(c) for c in codes])
    spend = [stores[i % 2].use_recovery_code("race", hash_recovery_code(codes[3]), time.time()) for i in range(10)]
    assert sorted(await asyncio.gather(*spend)) == [False] * 9 + [True]
    assert (await stores[1].get_mfa("race")).recovery_codes_left == 9
    assert not await stores[0].begin_mfa("race", "v1:other")  # a confirmed factor is never overwritten


# -- an HQ process: the enrolment-only login ------------------------------------------------------------
async def test_director_without_a_factor_may_only_enrol(hq: HQServer, http: aiohttp.ClientSession) -> None:
    status, body, response = await call(http, "POST", f"{hq.url}/api/auth/login",
                                        {"username": "eve", "password": PASSWORD})
    assert status == 200 and body["scope"] == "mfa_enroll" and "refresh_token" not in body
    assert "second factor" in body["message"] and body["expires_in"] <= 600
    assert "jwt" in response.cookies and "hq_refresh" not in response.cookies
    token = body["access_token"]
    for method, path in (("GET", "/api/auth/me"), ("GET", "/api/channels"), ("DELETE", "/api/agents/fox/mfa"),
                         ("POST", "/api/agents/fox/mfa")):
        status, refused, response = await call(http, method, f"{hq.url}{path}", token=token)
        assert (status, refused["error"]["code"]) == (403, "mfa_enrollment_required"), (path, refused)
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
    client = RecordingClient()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(hq.url, token)
    await client.close()
    assert client.connect_error["data"] == {"code": "mfa_enrollment_required"}
    status, state, _ = await call(http, "GET", f"{hq.url}/api/auth/mfa", token=token)
    assert status == 200 and state == {"enrolled": False, "pending": False, "required": True, "recovery_codes_left": 0}
    status, _, _ = await call(http, "POST", f"{hq.url}/api/auth/logout", token=token)
    assert status == 204
    status, ended, _ = await call(http, "GET", f"{hq.url}/api/auth/mfa", token=token)
    assert (status, ended["error"]["code"]) == (401, "token_revoked")
    refusals = [line for line in hq.audit_lines() if line["event"] == "connection_refused"]
    assert refusals[-1]["code"] == "mfa_enrollment_required"


async def test_self_enrolment_asks_the_password_again_then_a_code(hq: HQServer, http: aiohttp.ClientSession) -> None:
    status, body = await login(http, hq, "dora")
    token = body["access_token"]
    enroll = f"{hq.url}/api/auth/mfa/enroll"
    cookie = {"Cookie": f"jwt={token}"}
    status, refused, _ = await call(http, "POST", enroll, {"password": PASSWORD}, headers=cookie)
    assert (status, refused["error"]["code"]) == (403, "forbidden") and "X-HQ-Console" in refused["error"]["message"]
    status, refused, _ = await call(http, "POST", enroll, {"password": "not dora's password"}, token)
    assert (status, refused["error"]["code"]) == (401, "invalid_credentials")
    for bad in ({}, {"password": 12}, {"password": PASSWORD, "extra": 1}):
        status, refused, _ = await call(http, "POST", enroll, bad, token)
        assert (status, refused["error"]["code"]) == (400, "bad_request")
    # The console's way: the HttpOnly cookie and the header.
    status, enrollment, _ = await call(http, "POST", enroll, {"password": PASSWORD},
                                       headers={**cookie, "X-HQ-Console": "1"})
    assert status == 200, enrollment
    secret = enrollment["secret"]
    HANDED_OUT.append(secret)
    DORA_SECRET.append(secret)
    assert enrollment["otpauth_uri"] == f"otpauth://totp/HQ:dora?secret={secret}&issuer=HQ"
    assert enrollment["qr_svg"].startswith("<svg") and enrollment["qr_data_uri"].startswith("data:image/svg+xml")
    status, state, _ = await call(http, "GET", f"{hq.url}/api/auth/mfa", token=token)
    assert state["pending"] and not state["enrolled"]
    confirm = f"{hq.url}/api/auth/mfa/confirm"
    wrong = f"{(int(code_at(secret)) + 1) % 1_000_000:06d}"
    status, refused, _ = await call(http, "POST", confirm, {"code": wrong}, token)
    assert (status, refused["error"]["code"]) == (400, "invalid_otp")
    status, refused, _ = await call(http, "POST", confirm, {"code": code_at(secret, -2)}, token)
    assert (status, refused["error"]["code"]) == (400, "invalid_otp")
    status, done, response = await call(http, "POST", confirm, {"code": code_at(secret)},
                                        headers={**cookie, "X-HQ-Console": "1"})
    assert status == 200, done
    codes = done["recovery_codes"]
    HANDED_OUT.extend(codes)
    DORA_CODES.extend(codes)
    assert len(set(codes)) == 10 and all(RECOVERY_SHAPE.match(c) for c in codes)
    # The enrolment session is swapped for a full one, cookies and all.
    assert {"access_token", "refresh_token"} <= done.keys() and "scope" not in done
    assert {"jwt", "hq_refresh"} <= response.cookies.keys()
    status, me, _ = await call(http, "GET", f"{hq.url}/api/auth/me", token=done["access_token"])
    assert status == 200 and me["codename"] == "dora"
    status, ended, _ = await call(http, "GET", f"{hq.url}/api/auth/mfa", token=token)
    assert (status, ended["error"]["code"]) == (401, "token_revoked")
    status, state, _ = await call(http, "GET", f"{hq.url}/api/auth/mfa", token=done["access_token"])
    assert state == {"enrolled": True, "pending": False, "required": True, "recovery_codes_left": 10}
    status, again, _ = await call(http, "POST", enroll, {"password": PASSWORD}, done["access_token"])
    assert (status, again["error"]["code"]) == (409, "mfa_already_enrolled")
    status, again, _ = await call(http, "POST", confirm, {"code": code_at(secret)}, done["access_token"])
    assert (status, again["error"]["code"]) == (409, "mfa_not_pending")
    actions = [(a["actor"], a["action"], a["interface"]) for a in hq.audit_lines()
               if a["event"] == "admin_action" and a.get("target") == "dora" and a["action"].startswith("mfa")]
    assert actions == [("dora", "mfa_enroll", "console"), ("dora", "mfa_confirm", "console")]


# -- logging in with codes -------------------------------------------------------------------------------
async def test_login_asks_for_the_code_after_the_password_and_refuses_replays(
        hq: HQServer, http: aiohttp.ClientSession) -> None:
    secret, _, _ = await enrol(http, hq, "gus")
    status, body = await login(http, hq, "gus")
    assert (status, body["error"]["code"]) == (401, "mfa_required") and '"otp"' in body["error"]["message"]
    # A wrong password says nothing of the factor, with or without a code, known agent or not.
    wrong = [await login(http, hq, "gus", "a wrong password", otp=code_at(secret, 1)),
             await login(http, hq, "nobody", "a wrong password", otp=code_at(secret, 1)),
             await login(http, hq, "gus", "a wrong password")]
    # Whatever the code looks like (found by schemathesis: non-ASCII once made a 500).
    for odd in ("«çî\u0003\ud89f\udd7e", "\ud800", "١٢٣٤٥٦", "x" * 64):
        wrong.append(await login(http, hq, "nobody", "a wrong password", otp=odd))
    assert all(answer == wrong[0] for answer in wrong) and wrong[0][0] == 401
    assert wrong[0][1]["error"]["code"] == "invalid_credentials"
    status, refused = await login(http, hq, "gus", otp=code_at(secret, -2))
    assert (status, refused["error"]["code"]) == (401, "invalid_otp")
    next_code = code_at(secret, 1)  # the confirm used the current step; the next one is accepted early
    status, body = await login(http, hq, "gus", otp=f" {next_code[:3]} {next_code[3:]} ")
    assert status == 200, body
    status, refused = await login(http, hq, "gus", otp=next_code)
    assert (status, refused["error"]["code"]) == (401, "invalid_otp")  # the same code again: a replay
    # Refresh does not ask for a code again.
    status, refreshed, _ = await call(http, "POST", f"{hq.url}/api/auth/refresh",
                                      {"refresh_token": body["refresh_token"]})
    assert status == 200 and refreshed["agent"]["codename"] == "gus"
    lines = [a for a in hq.audit_lines() if a.get("codename") == "gus" and a["event"].startswith("login")]
    assert [a.get("code") or a.get("factor") for a in lines][-6:] == [
        "mfa_required", "invalid_credentials", "invalid_credentials", "invalid_otp", "totp", "invalid_otp"]


async def test_hostile_otp_values_get_contract_answers(hq: HQServer, http: aiohttp.ClientSession) -> None:
    for otp in (123456, ["123456"], {"code": 1}, True):
        status, refused = await login(http, hq, "hank", otp=otp)
        assert (status, refused["error"]["code"]) == (400, "bad_request"), otp
    status, body = await login(http, hq, "hank", otp="ignored: hank has no second factor")
    assert status == 200 and "refresh_token" in body
    secret, _, _ = await enrol(http, hq, "lim")
    for otp in ("x" * 60_000, "\u0000" * 6, "١٢٣٤٥٦", "", "-" * 20):  # huge, control, Arabic digits, empty
        status, refused = await login(http, hq, "lim", otp=otp)
        assert (status, refused["error"]["code"]) == (401, "invalid_otp"), otp[:10]
    assert "Traceback" not in hq.log_path.read_text()


async def test_wrong_codes_count_toward_the_login_limits(hq: HQServer, http: aiohttp.ClientSession) -> None:
    secret, _, _ = await enrol(http, hq, "rho")
    # hq uses the default 5 failures per codename; asking without a code must not clear the count.
    for _ in range(4):
        status, refused = await login(http, hq, "rho", otp="000000" if code_at(secret, 1) != "000000" else "111111")
        assert (status, refused["error"]["code"]) == (401, "invalid_otp")
        status, asked = await login(http, hq, "rho")
        assert (status, asked["error"]["code"]) == (401, "mfa_required")
    status, refused = await login(http, hq, "rho", otp="999999" if code_at(secret, 1) != "999999" else "888888")
    assert (status, refused["error"]["code"]) == (401, "invalid_otp")
    status, refused, response = await call(http, "POST", f"{hq.url}/api/auth/login",
                                           {"username": "rho", "password": PASSWORD, "otp": code_at(secret, 1)})
    assert (status, refused["error"]["code"]) == (429, "too_many_attempts")
    assert int(response.headers["Retry-After"]) > 0


async def test_recovery_codes_work_once_each(hq: HQServer, http: aiohttp.ClientSession) -> None:
    _, codes, _ = await enrol(http, hq, "pat")  # a director: enrolled through the enrolment-only token
    first = codes[0]
    status, body = await login(http, hq, "pat", otp=first.upper().replace("-", ""))
    assert status == 200 and "refresh_token" in body
    status, refused = await login(http, hq, "pat", otp=first)
    assert (status, refused["error"]["code"]) == (401, "invalid_otp")
    status, body = await login(http, hq, "pat", otp=" ".join(codes[1].split("-")))
    assert status == 200
    status, state, _ = await call(http, "GET", f"{hq.url}/api/auth/mfa", token=body["access_token"])
    assert state["recovery_codes_left"] == 8
    used = [a for a in hq.audit_lines() if a.get("codename") == "pat" and a.get("factor") == "recovery_code"]
    assert [a["recovery_codes_left"] for a in used] == [9, 8]


# -- sessions end with passwd and reset ----------------------------------------------------------------
async def live_socket(hq: HQServer, token: str) -> RecordingClient:
    client = RecordingClient()
    await client.connect(hq.url, token)
    return client


async def test_passwd_and_mfa_reset_end_sessions(hq: HQServer, http: aiohttp.ClientSession) -> None:
    secret, codes, confirmed = await enrol(http, hq, "dex")
    client = await live_socket(hq, confirmed["access_token"])
    try:
        result = hq.cli("agents", "passwd", "dex", "--password-stdin", stdin=NEW_PASSWORD + "\n")
        assert result.returncode == 0, result.stderr
        assert (await client.wait_for("session_ended"))[0] == {"reason": "revoked"}
        await client.wait_disconnected()
    finally:
        await client.close()
    status, body = await login(http, hq, "dex", NEW_PASSWORD, otp=codes[0])  # the factor outlives the password
    assert status == 200
    client = await live_socket(hq, body["access_token"])
    try:
        result = hq.cli("agents", "mfa", "reset", "DEX")
        assert result.returncode == 0 and "second factor removed" in result.stdout, result.stderr
        assert (await client.wait_for("session_ended"))[0] == {"reason": "revoked"}
        await client.wait_disconnected()
    finally:
        await client.close()
    status, _, _ = await call(http, "GET", f"{hq.url}/api/auth/me", token=body["access_token"])
    assert status == 401
    status, body = await login(http, hq, "dex", NEW_PASSWORD, otp=code_at(secret, 1))  # a director again
    assert status == 200 and body["scope"] == "mfa_enroll"
    again = hq.cli("agents", "mfa", "reset", "dex")
    assert again.returncode == 0 and "had no second factor" in again.stdout


# -- the operator CLI ------------------------------------------------------------------------------------
def cli_enroll(hq: HQServer, codename: str, answer: str | None) -> tuple[int, str, str, str | None]:
    """``python -m hq agents mfa enroll`` with standard input a pipe: read the secret it prints, then
    type ``answer`` (``"right"``: the current code; None: close stdin)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HQ_")}
    process = subprocess.Popen([sys.executable, "-m", "hq", "agents", "mfa", "enroll", codename, "--config",
                                str(hq.config)], cwd=hq.workdir, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**env, "PYTHONIOENCODING": "utf-8"})
    assert process.stdin is not None and process.stdout is not None
    printed, secret = "", None
    try:
        for line in process.stdout:
            printed += line
            if line.startswith("Secret:"):
                secret = line.split()[1]
                break
        if secret is not None and answer is not None:
            process.stdin.write((code_at(secret) if answer == "right" else answer) + "\n")
            process.stdin.flush()
        out, err = process.communicate(timeout=30)  # closes stdin: EOF for a second prompt
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, printed + out, err, secret


async def test_cli_enroll_prints_uri_and_qr_and_needs_a_code(hq: HQServer, http: aiohttp.ClientSession) -> None:
    code, out, err, secret = cli_enroll(hq, "cli1", "123")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not complete" in err, (out, err)
    status, body = await login(http, hq, "cli1")
    assert status == 200  # a pending enrolment asks nothing at login
    code, out, err, secret = cli_enroll(hq, "cli1", "right")
    assert code == 0, (out, err)
    assert secret is not None
    HANDED_OUT.append(secret)
    assert f"otpauth://totp/HQ:cli1?secret={secret}&issuer=HQ" in out and "▀" in out  # the URI and the QR code
    codes = re.findall(r"^  (\S{4}-\S{4}-\S{4}-\S{4})$", out, re.MULTILINE)
    HANDED_OUT.extend(codes)
    assert len(set(codes)) == 10, out
    status, body = await login(http, hq, "cli1")
    assert (status, body["error"]["code"]) == (401, "mfa_required")
    status, body = await login(http, hq, "cli1", otp=codes[-1])
    assert status == 200
    code, out, err, _ = cli_enroll(hq, "cli1", None)
    assert code == 2 and "already has a second factor" in err and "Secret" not in out
    listed = [line.split() for line in hq.cli("agents", "list").stdout.splitlines()]
    assert next(row for row in listed if row[0] == "cli1")[-1] == "yes"  # the 2FA column
    refused = hq.cli("agents", "mfa", "reset", "nobody")
    assert refused.returncode == 2 and refused.stderr.strip() == "hq: no agent named nobody"
    actions = [(a["actor"], a["interface"], a["action"]) for a in hq.audit_lines()
               if a["event"] == "admin_action" and a.get("target") == "cli1" and a["action"].startswith("mfa")]
    assert actions == [("cli", "cli", "mfa_enroll"), ("cli", "cli", "mfa_enroll"), ("cli", "cli", "mfa_confirm")]


def test_cli_enroll_on_a_terminal_asks_again_after_a_wrong_code(hq: HQServer) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HQ_")}
    typed: list[str] = []

    def respond(output: bytes) -> str | None:
        if output.count(b"Code from the app: ") <= len(typed):
            return None
        secret = re.search(rb"Secret: ([A-Z2-7]+)", output).group(1).decode()  # type: ignore[union-attr]
        typed.append("000000" if not typed and code_at(secret) != "000000" else code_at(secret))
        return typed[-1]

    status, text = run_on_terminal(["hq", "agents", "mfa", "enroll", "hank", "--config", str(hq.config)], respond,
                                   cwd=hq.workdir, env=env)
    HANDED_OUT.extend(re.findall(r"Secret: ([A-Z2-7]+)", text))
    HANDED_OUT.extend(re.findall(r"^  (\S{4}-\S{4}-\S{4}-\S{4})\s*$", text, re.MULTILINE))
    assert status == 0 and len(typed) == 2, text
    assert "does not match" in text and "hank enrolled" in text
    assert hq.cli("agents", "mfa", "reset", "hank").returncode == 0  # hank logs in without one elsewhere


# -- the directors' routes --------------------------------------------------------------------------------
async def test_directors_enrol_and_reset_other_agents(hq: HQServer, http: aiohttp.ClientSession) -> None:
    assert DORA_CODES, "run with test_self_enrolment_asks_the_password_again_then_a_code"
    status, body = await login(http, hq, "dora", otp=DORA_CODES[0])
    assert status == 200, body
    director = body["access_token"]
    handler = (await login(http, hq, "hank"))[1]["access_token"]
    begin = f"{hq.url}/api/agents/fox/mfa"
    status, refused, _ = await call(http, "POST", begin, token=handler)
    assert (status, refused["error"]["code"]) == (403, "forbidden")
    status, refused, _ = await call(http, "POST", begin, headers={"Cookie": f"jwt={director}"})
    assert (status, refused["error"]["code"]) == (403, "forbidden")
    status, refused, _ = await call(http, "POST", f"{hq.url}/api/agents/nobody/mfa", token=director)
    assert (status, refused["error"]["code"]) == (404, "not_found")
    status, enrollment, _ = await call(http, "POST", begin, token=director)
    assert status == 200 and enrollment["otpauth_uri"].startswith("otpauth://totp/HQ:fox?")
    HANDED_OUT.append(enrollment["secret"])
    status, done, _ = await call(http, "POST", f"{begin}/confirm", {"code": code_at(enrollment["secret"])},
                                 token=director)
    assert status == 200 and len(done["recovery_codes"]) == 10
    HANDED_OUT.extend(done["recovery_codes"])
    status, body = await login(http, hq, "fox")
    assert (status, body["error"]["code"]) == (401, "mfa_required")
    status, body = await login(http, hq, "fox", otp=code_at(enrollment["secret"], 1))
    assert status == 200
    client = await live_socket(hq, body["access_token"])
    try:
        status, _, _ = await call(http, "DELETE", begin, token=director)
        assert status == 204
        assert (await client.wait_for("session_ended"))[0] == {"reason": "revoked"}
    finally:
        await client.close()
    status, body = await login(http, hq, "fox")
    assert status == 200 and "refresh_token" in body  # a field operative needs no factor once reset
    actions = [(a["actor"], a["interface"], a["action"]) for a in hq.audit_lines()
               if a["event"] == "admin_action" and a.get("target") == "fox" and a["action"].startswith("mfa")]
    assert actions == [("dora", "api", "mfa_enroll"), ("dora", "api", "mfa_confirm"), ("dora", "api", "mfa_reset")]


# -- several nodes, and a key file that does not match ------------------------------------------------------
@pytest.mark.cluster
async def test_a_code_is_good_once_across_two_nodes(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """Two HQ nodes on one PostgreSQL database and one MFA key file: a step used on one node is refused
    on the other (the same guard, many concurrent attempts: test_a_step_and_a_recovery_code_...)."""
    url = await create_database()
    shared = {"storage": {"url": url}, "auth": {"mfa_required": ["director"], "mfa_key_file": str(tmp_path / "mfa.key"),
                                                "secret": "a shared secret of at least thirty-two bytes"}}
    a = make_in_process_server(tmp_path / "a", {"dora": "director"}, **shared)
    b = make_in_process_server(tmp_path / "b", {}, **shared)
    try:
        await asyncio.gather(asyncio.to_thread(a.start), asyncio.to_thread(b.start))
        secret, _, _ = await enrol(http, a, "dora")
        status, body = await login(http, b, "dora", otp=code_at(secret))  # the step a's enrolment used
        assert (status, body["error"]["code"]) == (401, "invalid_otp")
        status, _ = await login(http, b, "dora", otp=code_at(secret, 1))
        assert status == 200
        status, body = await login(http, a, "dora", otp=code_at(secret, 1))  # used on b a moment ago
        assert (status, body["error"]["code"]) == (401, "invalid_otp")
    finally:
        a.stop()
        b.stop()
        await drop_database(url)


@pytest.mark.real_process  # MFA_DEFAULTS enable [admin]: python-socketio's instrumentation is process-wide
async def test_a_key_file_that_does_not_match_answers_unavailable(hq_factory: Any,
                                                                   http: aiohttp.ClientSession) -> None:
    hq = hq_factory({"dora": "director"}, **MFA_DEFAULTS)
    secret, _, _ = await enrol(http, hq, "dora")
    hq.stop()
    (hq.workdir / "hq.mfa-key").unlink()  # lost: HQ makes a new one, which opens nothing enrolled before
    hq.start()
    async with aiohttp.ClientSession() as fresh:  # the old one's kept-alive connections died with HQ
        status, body = await login(fresh, hq, "dora", otp=code_at(secret, 1))
        assert (status, body["error"]["code"]) == (503, "unavailable")
        log = hq.log_path.read_text()
        assert "does not open with the MFA key file" in log and "Traceback" not in log and secret not in log
        assert hq.cli("agents", "mfa", "reset", "dora").returncode == 0  # the way back: reset, enrol again
        status, body = await login(fresh, hq, "dora")
        assert status == 200 and body["scope"] == "mfa_enroll"


# -- the Admin UI (one password field) --------------------------------------------------------------------
async def test_admin_ui_wants_the_code_after_the_password(hq: HQServer) -> None:
    assert DORA_SECRET, "run with test_self_enrolment_asks_the_password_again_then_a_code"
    secret = DORA_SECRET[0]
    for auth in ({"username": "dora", "password": PASSWORD},  # no code
                 {"username": "dora", "password": PASSWORD + code_at(secret, -2)},  # a stale code
                 {"username": "eve", "password": PASSWORD}):  # a director with no factor yet
        client = AdminClient()
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(hq, auth)
        await client.close()
    admin = await AdminClient().connect(hq, {"username": "dora", "password": PASSWORD + code_at(secret, 1)})
    await admin.wait_for("config")
    await admin.close()
    lines = [line for line in hq.audit_lines() if line.get("interface") == "admin_ui"]
    assert [line.get("code", "ok") for line in lines] == [
        "invalid_credentials", "invalid_otp", "mfa_enrollment_required", "ok"]


# -- at rest and in the logs ------------------------------------------------------------------------------
def test_secrets_and_codes_appear_nowhere_in_clear(hq: HQServer) -> None:
    assert len(HANDED_OUT) >= 50, "run with the tests above: they enrol agents"
    files = [p for p in hq.workdir.iterdir() if p.is_file()]
    assert {"hq.sqlite3", "hq.mfa-key", "audit.log", "server.log"} <= {p.name for p in files}
    assert stat.S_IMODE((hq.workdir / "hq.mfa-key").stat().st_mode) == 0o600
    # The database (with its WAL), the logs and the audit log; compared as bytes, any case.
    contents = {p.name: p.read_bytes().lower() for p in files if p.name != "hq.mfa-key"}
    for secret in HANDED_OUT:
        needles = {secret.lower().encode(), secret.replace("-", "").lower().encode()}
        for name, content in contents.items():
            assert not any(n in content for n in needles), f"{secret[:4]}... found in {name}"
