"""The operator CLI as a subprocess: first start, the generated secret, ``agents add | list | passwd |
disable | enable``, password prompts on a real terminal, and exit codes 0 / 1 / 2 with one-line errors.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest

from .cli import run_cli
from .sio import RecordingClient
from .support import HQServer, make_server, write_config
from .terminal import run_on_terminal

NEW_PASSWORD = "a brand new password"
FIRST_AGENT_LINE = re.compile(r"HQ created the first agent: codename '([^']+)', password '([^']+)'")


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HQServer]:
    """An HQ started with no agents at all; a real process: the first agent is announced on serve's output."""
    server = make_server(tmp_path_factory.mktemp("cli"), agents={}).start()
    yield server
    server.stop()


def one_line_error(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """Check the exit code and that stderr is exactly one line; return it."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


async def me(server: HQServer, token: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/api/auth/me", headers={"Authorization": f"Bearer {token}"}) as r:
            return r.status, await r.json()


async def login_status(server: HQServer, codename: str, password: str) -> int:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.url}/api/auth/login", json={"username": codename, "password": password}) as r:
            return r.status


# First start and the generated secret ---------------------------------------------------------------

async def test_first_start_director_secret_and_restart(fresh: HQServer) -> None:
    matches = FIRST_AGENT_LINE.findall(fresh.log_path.read_text())
    assert len(matches) == 1, fresh.log_path.read_text()
    codename, password = matches[0]
    assert codename == "director" and len(password) >= 12
    body = fresh.login(codename, password)
    assert body["agent"] == {"codename": "director", "role": "director"}

    secret_file = fresh.workdir / "hq.secret"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    secret = secret_file.read_bytes()
    assert len(secret.strip()) >= 32 and secret.strip().decode() not in fresh.log_path.read_text()

    fresh.restart()
    assert secret_file.read_bytes() == secret  # reused, not regenerated
    assert len(FIRST_AGENT_LINE.findall(fresh.log_path.read_text())) == 1  # printed once, ever
    status, who = await me(fresh, body["access_token"])  # a token from before the restart still works
    assert status == 200 and who["codename"] == "director"
    assert password not in (fresh.workdir / "audit.log").read_text()


# agents add / list ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def neo(fresh: HQServer) -> subprocess.CompletedProcess[str]:
    """``agents add Neo.One`` (the refusals below need it to exist), as a process of its own: with
    ``agents list`` below, the CLI's smoke test as a program (the other commands run in this process)."""
    return run_cli(fresh.config, "agents", "add", "Neo.One", "--role", "analyst", "--password-stdin",
                   stdin="twelve chars\n")


async def test_add_and_list(fresh: HQServer, neo: subprocess.CompletedProcess[str]) -> None:
    added = neo
    assert added.returncode == 0, added.stderr
    assert "Neo.One" in added.stdout and "analyst" in added.stdout
    assert "twelve chars" not in added.stdout + added.stderr
    listed = run_cli(fresh.config, "agents", "list")
    assert listed.returncode == 0 and listed.stderr == ""
    rows = [line.split() for line in listed.stdout.strip().splitlines()]
    assert rows[0] == ["CODENAME", "ROLE", "ENABLED", "CREATED", "LAST_LOGIN", "2FA"]
    neo = next(row for row in rows if row[0] == "Neo.One")
    assert neo[1:3] == ["analyst", "yes"] and re.match(r"\d{4}-\d{2}-\d{2}", neo[3])
    assert neo[4:] == ["never", "no"]
    assert "$2" not in listed.stdout and "bcrypt" not in listed.stdout.lower()
    assert await login_status(fresh, "neo.one", "twelve chars") == 200
    rows = [line.split() for line in fresh.cli("agents", "list").stdout.strip().splitlines()]
    neo = next(row for row in rows if row[0] == "Neo.One")
    assert re.match(r"\d{4}-\d{2}-\d{2}", neo[4]) and neo[4] >= neo[3] and neo[5] == "no"


# name -> (arguments after "agents", stdin, text the error line must contain)
REFUSALS: dict[str, tuple[tuple[str, ...], str | None, str]] = {
    "duplicate in another case": (("add", "NEO.one", "--role", "analyst", "--password-stdin"),
                                  "long enough password\n", "exists"),
    "password of 11": (("add", "short", "--role", "analyst", "--password-stdin"), "eleven char\n", "12"),
    "password of 1025": (("add", "huge", "--role", "analyst", "--password-stdin"), "p" * 1025 + "\n", "1024"),
    "empty stdin": (("add", "nostdin", "--role", "analyst", "--password-stdin"), "", "password"),
    "space in codename": (("add", "bad name", "--role", "analyst", "--password-stdin"), "long enough pw\n",
                          "codename"),
    "codename of 65": (("add", "x" * 65, "--role", "analyst", "--password-stdin"), "long enough pw\n", "codename"),
    "non-ASCII codename": (("add", "ünï", "--role", "analyst", "--password-stdin"), "long enough pw\n",
                           "codename"),
    "unknown role": (("add", "rolling", "--role", "admin", "--password-stdin"), "long enough pw\n", "role"),
    "passwd unknown agent": (("passwd", "ghost", "--password-stdin"), "long enough pw\n", "ghost"),
    "passwd too short": (("passwd", "Neo.One", "--password-stdin"), "short\n", "12"),
    "disable unknown agent": (("disable", "ghost"), None, "ghost"),
    "no action": ((), None, "action"),
    "unknown action": (("promote", "neo"), None, "promote"),
}


@pytest.fixture(scope="module")
def refusals(fresh: HQServer, neo: subprocess.CompletedProcess[str]) -> dict[str, subprocess.CompletedProcess[str]]:
    """Every refused command, run once against the fresh HQ's data, two at a time."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(fresh.cli, "agents", *args, stdin=stdin)
                   for name, (args, stdin, _) in REFUSALS.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_commands_exit_2(case: str, refusals: dict[str, subprocess.CompletedProcess[str]]) -> None:
    line = one_line_error(refusals[case], 2)
    assert REFUSALS[case][2].lower() in line.lower(), line
    assert "long enough pw" not in line


def test_refusals_changed_nothing(fresh: HQServer, refusals: dict[str, subprocess.CompletedProcess[str]]) -> None:
    names = [line.split()[0] for line in fresh.cli("agents", "list").stdout.strip().splitlines()[1:]]
    for name in ("NEO.one", "short", "huge", "nostdin", "rolling", "ghost"):
        assert name not in names


def test_codename_edges_are_accepted(fresh: HQServer) -> None:
    for codename in ("x" * 64, "A.b_c-9"):
        result = fresh.cli("agents", "add", codename, "--role", "field-operative", "--password-stdin",
                           stdin="long enough password\n")
        assert result.returncode == 0, result.stderr


# passwd / disable / enable against a running HQ -------------------------------------------------------

async def test_passwd_ends_sessions(fresh: HQServer) -> None:
    fresh.add_agent("trinity", "handler", "the old password")
    old = fresh.login("trinity", "the old password")["access_token"]
    client = RecordingClient()
    try:
        await client.connect(fresh.url, old)
        result = fresh.cli("agents", "passwd", "TRINITY", "--password-stdin", stdin=NEW_PASSWORD + "\n")
        assert result.returncode == 0, result.stderr
        assert NEW_PASSWORD not in result.stdout + result.stderr
        assert (await client.wait_for("session_ended"))[0] == {"reason": "revoked"}
        await client.wait_disconnected()
    finally:
        await client.close()
    status, body = await me(fresh, old)
    assert status == 401 and body["error"]["code"] == "token_revoked"
    assert await login_status(fresh, "trinity", "the old password") == 401
    assert await login_status(fresh, "trinity", NEW_PASSWORD) == 200


async def test_disable_ends_live_sockets_and_enable_restores_login(fresh: HQServer) -> None:
    fresh.add_agent("morpheus", "director", "morpheus password")
    token = fresh.login("morpheus", "morpheus password")["access_token"]
    client = RecordingClient()
    try:
        await client.connect(fresh.url, token)
        assert (await client.call("join", {"channel": "missions"}))["ok"]
        result = fresh.cli("agents", "disable", "morpheus")
        assert result.returncode == 0, result.stderr
        assert (await client.wait_for("session_ended"))[0] == {"reason": "agent_disabled"}
        await client.wait_disconnected()
    finally:
        await client.close()
    assert await login_status(fresh, "morpheus", "morpheus password") == 403
    listed = fresh.cli("agents", "list").stdout
    assert re.search(r"^morpheus\s+director\s+no\s", listed, re.MULTILINE), listed
    assert fresh.cli("agents", "enable", "MORPHEUS").returncode == 0
    assert await login_status(fresh, "morpheus", "morpheus password") == 200
    assert (await me(fresh, token))[1]["error"]["code"] == "token_revoked"  # old sessions stay ended


# Prompts on a terminal --------------------------------------------------------------------------------

def run_hq_on_terminal(config: Path, args: list[str], answers: list[str], timeout: float = 30) -> tuple[int, str]:
    """Run ``python -m hq`` on a pseudo-terminal, typing one answer per password prompt."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HQ_")}
    typed: list[str] = []

    def respond(output: bytes) -> str | None:
        # Answer each prompt once, only after it appeared (echo is off from then on).
        if len(typed) < len(answers) and output.count(b"assword: ") > len(typed) and output.endswith(b": "):
            typed.append(answers[len(typed)])
            return typed[-1]
        return None

    return run_on_terminal(["hq", *args, "--config", str(config)], respond, cwd=config.parent, env=env,
                           timeout=timeout)


async def test_prompted_password_is_not_echoed(fresh: HQServer) -> None:
    typed = "typed on a terminal"
    code, output = run_hq_on_terminal(fresh.config, ["agents", "add", "tank", "--role", "handler"], [typed, typed])
    assert code == 0, output
    assert output.count("assword:") == 2 and typed not in output
    assert await login_status(fresh, "tank", typed) == 200
    code, output = run_hq_on_terminal(fresh.config, ["agents", "passwd", "tank"], ["first attempt!", "second attempt"])
    assert code == 2 and "match" in output
    assert await login_status(fresh, "tank", typed) == 200  # unchanged


# Other exit codes --------------------------------------------------------------------------------------

def test_runtime_error_exits_1(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    config = tmp_path / "config.toml"
    write_config(config, {"storage": {"url": f"sqlite:///{blocker}/hq.sqlite3"}, "auth": {"bcrypt_rounds": 4}})
    line = one_line_error(run_cli(config, "agents", "list"), 1)
    assert line.startswith("hq:")


def test_config_before_the_command_is_honoured(fresh: HQServer, tmp_path: Path) -> None:
    # `python -m hq --config PATH agents list` must read PATH, not ./config.toml or the defaults.
    result = subprocess.run([sys.executable, "-m", "hq", "--config", str(fresh.config), "agents", "list"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=60,
                            env={k: v for k, v in os.environ.items() if not k.startswith("HQ_")})
    assert result.returncode == 0, result.stderr
    assert "director" in result.stdout
    assert not list(tmp_path.iterdir())  # nothing was created in the working folder


def test_hq_config_variable(fresh: HQServer, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HQ_")} | {"HQ_CONFIG": str(fresh.config)}
    result = subprocess.run([sys.executable, "-m", "hq", "agents", "list"], capture_output=True, text=True,
                            cwd=tmp_path, timeout=60, env=env)
    assert result.returncode == 0 and "director" in result.stdout, result.stderr


# keys add / list / revoke against a running HQ ------------------------------------------------------------

async def test_keys_add_list_revoke_end_the_keys_live_socket(fresh: HQServer) -> None:
    added = fresh.cli("keys", "add", "Deploy-Bot", "--role", "handler")
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"hqk_[A-Za-z0-9_-]{43,}", key), added.stdout
    assert one_line_error(fresh.cli("keys", "add", "deploy-bot", "--role", "analyst")).startswith("hq: a key named")
    assert "unknown role" in one_line_error(fresh.cli("keys", "add", "other", "--role", "king"))
    assert "key names are" in one_line_error(fresh.cli("keys", "add", "bad:name", "--role", "handler"))
    client = RecordingClient()
    try:
        await client.connect(fresh.url, key)
        assert (await client.call("join", {"channel": "hq"}))["ok"] is True
        listed = fresh.cli("keys", "list")
        assert listed.returncode == 0 and key.removeprefix("hqk_") not in listed.stdout
        header, *rows = listed.stdout.splitlines()
        assert header.split() == ["NAME", "ROLE", "CREATED", "LAST_USED"]
        assert [row.split()[:2] for row in rows] == [["Deploy-Bot", "handler"]]
        revoked = fresh.cli("keys", "revoke", "DEPLOY-BOT")
        assert revoked.returncode == 0, revoked.stderr
        # The CLI is another process: the server learns of it from the revocation feed.
        assert (await client.wait_for("session_ended"))[0] == {"reason": "revoked"}
        await client.wait_disconnected()
    finally:
        await client.close()
    assert one_line_error(fresh.cli("keys", "revoke", "deploy-bot")) == "hq: no key named deploy-bot"
    assert fresh.cli("keys", "list").stdout.splitlines()[1:] == []
    refused = RecordingClient()
    with pytest.raises(Exception):
        await refused.connect(fresh.url, key)
    await refused.close()
    assert refused.connect_error["data"]["code"] == "token_revoked"
    audit = [line for line in fresh.audit_lines() if line["event"] == "admin_action" and line["interface"] == "cli"]
    assert [(a["action"], a["target"]) for a in audit if a["action"].startswith("key_")] == [
        ("key_add", "key:Deploy-Bot"), ("key_revoke", "key:Deploy-Bot")]
