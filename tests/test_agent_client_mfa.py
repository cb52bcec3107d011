"""``agent_client`` and a second factor (issue 12): ``login(..., otp=)``, typed errors, refreshes that
never ask for a code, and the CLI's ``$AGENT_OTP`` and terminal prompt, against a real HQ."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Iterator

import aiohttp
import pyotp
import pytest

from agent_client import AgentClient, InvalidOtp, LoginFailed, MfaEnrollmentRequired, MfaRequired

from .support import PASSWORD, ROOT, HQServer
from .terminal import run_on_terminal
from .threaded_hq import make_in_process_server

# HQ's default policy; 3-second tokens so that the client refreshes within the test.
CONFIG = {"auth": {"mfa_required": ["director"], "access_ttl": 3, "expiry_warning": 1},
          "limits": {"login_failures_per_address": 1000}}


@pytest.fixture(scope="module")
def hq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HQServer]:
    server = make_in_process_server(tmp_path_factory.mktemp("client-mfa"), {"gus": "handler", "dora": "director",
                                                                 "hank": "handler"}, **CONFIG).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gus(hq: HQServer) -> tuple[str, list[str]]:
    """gus enrolled (through HQ's self-enrolment API): its TOTP secret and recovery codes."""
    async def enrol() -> tuple[str, list[str]]:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{hq.url}/api/auth/login", json={"username": "gus", "password": PASSWORD}) as r:
                token = (await r.json())["access_token"]
            bearer = {"Authorization": f"Bearer {token}"}
            async with http.post(f"{hq.url}/api/auth/mfa/enroll", json={"password": PASSWORD}, headers=bearer) as r:
                secret = (await r.json())["secret"]
            async with http.post(f"{hq.url}/api/auth/mfa/confirm", json={"code": pyotp.TOTP(secret).now()},
                                 headers=bearer) as r:
                assert r.status == 200
                return secret, (await r.json())["recovery_codes"]
    return asyncio.run(enrol())


async def test_login_with_otp_then_refreshes_without_it(hq: HQServer, gus: tuple[str, list[str]]) -> None:
    secret, _ = gus
    async with AgentClient(hq.url) as client:
        with pytest.raises(MfaRequired) as asked:
            await client.login("gus", PASSWORD)
    assert asked.value.code == "mfa_required" and asked.value.terminal and "otp" in asked.value.message
    async with AgentClient(hq.url) as client:
        with pytest.raises(LoginFailed):  # a wrong password with a code says nothing of the code
            await client.login("gus", "not gus's password", otp=pyotp.TOTP(secret).now())
    async with AgentClient(hq.url) as client:
        with pytest.raises(InvalidOtp) as wrong:
            await client.login("gus", PASSWORD, otp="12345a")
    assert wrong.value.code == "invalid_otp"
    async with AgentClient(hq.url) as client:
        # The enrolment used the current step; the next one is accepted early.
        agent = await client.login("gus", PASSWORD, otp=pyotp.TOTP(secret).at(time.time() + 30))
        assert (agent.codename, agent.role) == ("gus", "handler")
        await client.connect(["hq"])
        first = await client.send("hq", "before the refresh")
        deadline = time.monotonic() + 15
        while client.refreshes < 2 and time.monotonic() < deadline:  # 3 s tokens: renewed without a code
            await asyncio.sleep(0.1)
        assert client.refreshes >= 2 and client.connected and client.error is None
        assert await client.send("hq", "after two refreshes") == first + 1


async def test_an_agent_that_must_enrol_gets_a_typed_error(hq: HQServer) -> None:
    async with AgentClient(hq.url) as client:
        with pytest.raises(MfaEnrollmentRequired) as refused:
            await client.login("dora", PASSWORD, otp="123456")  # no factor yet: the code is not asked
    assert refused.value.code == "mfa_enrollment_required" and "second factor" in refused.value.message
    assert client.agent is None


def agent_env(**extra: str) -> dict[str, str]:
    names = ("HQ_URL", "AGENT_CODENAME", "AGENT_PASSWORD", "AGENT_OTP")
    return {**{k: v for k, v in os.environ.items() if k not in names}, **extra}


def test_cli_takes_the_code_from_agent_otp(hq: HQServer, gus: tuple[str, list[str]]) -> None:
    command = [sys.executable, "-m", "agent_client", "--url", hq.url, "--codename", "gus", "login"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL,
                            env=agent_env(AGENT_PASSWORD=PASSWORD, AGENT_OTP=gus[1][0]))
    assert (result.returncode, result.stdout) == (0, "gus handler\n"), result.stderr
    asked = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL,
                           env=agent_env(AGENT_PASSWORD=PASSWORD))
    lines = asked.stderr.strip().splitlines()
    assert asked.returncode == 1 and len(lines) == 1, asked.stderr
    assert lines[0].startswith("error: mfa_required: ") and "$AGENT_OTP" in lines[0]
    spent = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL,
                           env=agent_env(AGENT_PASSWORD=PASSWORD, AGENT_OTP=gus[1][0]))
    assert spent.returncode == 1 and spent.stderr.startswith("error: invalid_otp: "), spent.stderr


def test_cli_prompts_for_the_code_on_a_terminal(hq: HQServer, gus: tuple[str, list[str]]) -> None:
    code = gus[1][1]
    answered: list[bool] = []

    def respond(output: bytes) -> str | None:
        if not answered and output.endswith(b"recovery code): "):
            answered.append(True)
            return code
        return None

    # A terminal of its own, the password in the environment, no code.
    status, text = run_on_terminal(["agent_client", "--url", hq.url, "--codename", "gus", "login"], respond,
                                   cwd=ROOT, env=agent_env(AGENT_PASSWORD=PASSWORD))
    assert answered and status == 0, text
    assert text.rstrip().endswith("gus handler") and code not in text  # asked once, without echo
