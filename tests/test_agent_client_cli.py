"""``python -m agent_client`` as a subprocess against a real HQ: login, send, history, listen, errors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import pytest

from .support import PASSWORD, ROOT, HQServer, free_port


def agent_env(**extra: str) -> dict[str, str]:
    """The environment without any inherited HQ_URL / AGENT_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("HQ_URL", "AGENT_CODENAME", "AGENT_PASSWORD")}
    return {**env, **extra}


def run_agent(hq_url: str, *args: str, codename: str | None = "hank", password: str | None = PASSWORD,
              stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m agent_client --url URL [--codename C] ARGS`` with the password in the environment."""
    command = [sys.executable, "-m", "agent_client", "--url", hq_url]
    if codename is not None:
        command += ["--codename", codename]
    full_env = env if env is not None else agent_env(**({"AGENT_PASSWORD": password} if password else {}))
    return subprocess.run([*command, *args], input=stdin, capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env=full_env, start_new_session=True)


def assert_one_error_line(result: subprocess.CompletedProcess[str], code: str, exit_code: int = 1) -> None:
    assert result.returncode == exit_code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and code in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_login_prints_codename_and_role(shared_hq: HQServer) -> None:
    result = run_agent(shared_hq.url, "login")
    assert (result.returncode, result.stdout) == (0, "hank handler\n"), result.stderr
    as_json = run_agent(shared_hq.url, "--json", "login", codename="FOX")
    assert json.loads(as_json.stdout) == {"codename": "fox", "role": "field-operative"}


def test_environment_defaults_and_password_prompt(shared_hq: HQServer) -> None:
    # No --url, no --codename, no $AGENT_PASSWORD: $HQ_URL, $AGENT_CODENAME and the prompt (stdin here).
    result = subprocess.run([sys.executable, "-m", "agent_client", "login"], input=PASSWORD + "\n",
                            capture_output=True, text=True, timeout=60, cwd=ROOT, start_new_session=True,
                            env=agent_env(HQ_URL=shared_hq.url, AGENT_CODENAME="dora"))
    assert (result.returncode, result.stdout.splitlines()[-1]) == (0, "dora director"), result.stderr
    assert PASSWORD not in result.stdout + result.stderr


def test_send_prints_the_id_and_history_lists_it(shared_hq: HQServer) -> None:
    sent = run_agent(shared_hq.url, "send", "missions", "meet at the docks\nat nine")
    assert sent.returncode == 0, sent.stderr
    message_id = int(sent.stdout)
    second = run_agent(shared_hq.url, "--json", "send", "missions", "second")
    assert json.loads(second.stdout) == {"id": message_id + 1}
    history = run_agent(shared_hq.url, "history", "missions", "--after", str(message_id - 1), codename="fox")
    assert history.returncode == 0, history.stderr
    assert history.stdout.splitlines() == [f"#missions {message_id} hank: meet at the docks\\nat nine",
                                           f"#missions {message_id + 1} hank: second"]
    as_json = run_agent(shared_hq.url, "--json", "history", "missions", "--limit", "1")
    (line,) = as_json.stdout.splitlines()
    message = json.loads(line)
    assert (message["id"], message["from"], message["text"], message["channel"]) == \
        (message_id + 1, "hank", "second", "missions")
    assert message["ts"].endswith("Z")


async def test_listen_prints_one_line_per_message_until_terminated(shared_hq: HQServer) -> None:
    for stop in (signal.SIGTERM, signal.SIGINT):
        listener = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent_client", "--url", shared_hq.url, "--codename", "fox", "listen",
            "missions", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
            env=agent_env(AGENT_PASSWORD=PASSWORD), start_new_session=True)
        try:
            assert listener.stderr is not None and listener.stdout is not None
            status = await asyncio.wait_for(listener.stderr.readline(), 30)
            assert status.decode().startswith("listening to #missions"), status
            sent = await asyncio.to_thread(run_agent, shared_hq.url, "send", "missions", f"stop with {stop.name}")
            message_id = int(sent.stdout)
            line = await asyncio.wait_for(listener.stdout.readline(), 15)
            assert line.decode() == f"#missions {message_id} hank: stop with {stop.name}\n"
            listener.send_signal(stop)
            assert await asyncio.wait_for(listener.wait(), 15) == 0
            assert (await listener.stderr.read()) == b""
        finally:
            if listener.returncode is None:
                listener.kill()
                await listener.wait()


@pytest.mark.parametrize("args, codename, code", [
    (["send", "missions", "fox may not write missions"], "fox", "forbidden"),
    (["history", "no-such-channel"], "dora", "not_found"),
    (["listen", "missions"], "ana", "forbidden"),
    (["send", "missions", "x" * 16385], "hank", "payload_too_large"),
    (["send", "missions", ""], "hank", "bad_request"),
])
def test_refusals_are_one_line_with_the_code(shared_hq: HQServer, args: list[str], codename: str,
                                             code: str) -> None:
    assert_one_error_line(run_agent(shared_hq.url, *args, codename=codename), code)


def test_wrong_password_and_unreachable_hq(shared_hq: HQServer) -> None:
    assert_one_error_line(run_agent(shared_hq.url, "login", codename="fox", password="not the password"),
                          "invalid_credentials")
    assert_one_error_line(run_agent(f"http://127.0.0.1:{free_port()}", "login"), "unavailable")


def test_usage_errors_exit_2(shared_hq: HQServer) -> None:
    assert_one_error_line(run_agent(shared_hq.url, "login", codename=None), "codename", exit_code=2)
    assert_one_error_line(run_agent(shared_hq.url, "frobnicate"), "invalid choice", exit_code=2)
    assert_one_error_line(run_agent(shared_hq.url, "send", "missions"), "required", exit_code=2)


async def test_listen_stops_with_one_error_line_when_the_agent_is_disabled(shared_hq: HQServer) -> None:
    shared_hq.add_agent("sleeper", "field-operative")
    listener = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent_client", "--url", shared_hq.url, "--codename", "sleeper", "listen",
        "missions", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        env=agent_env(AGENT_PASSWORD=PASSWORD), start_new_session=True)
    try:
        assert listener.stderr is not None
        status = await asyncio.wait_for(listener.stderr.readline(), 30)
        assert status.decode().startswith("listening to #missions"), status
        result = await asyncio.to_thread(shared_hq.cli, "agents", "disable", "sleeper")
        assert result.returncode == 0, result.stderr
        assert await asyncio.wait_for(listener.wait(), 15) == 1
        lines = (await listener.stderr.read()).decode().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: agent_disabled"), lines
    finally:
        if listener.returncode is None:
            listener.kill()
            await listener.wait()
