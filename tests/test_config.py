"""Configuration: built-in defaults, a TOML file, HQ_<SECTION>_<KEY> overrides, and start-up refusals.

The refusals run the real ``python -m hq serve`` and check exit code 2 with one stderr line naming
the key; the happy paths read settings in-process and one real server proves env overrides apply.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest

from hq.config import ChannelPolicy, ConfigError, find_config, load_settings

from .cli import run_cli
from .support import LISTENING, HQProcess, free_port, write_config

SHORT_SECRET = "too-short-secret-xyz"  # 20 bytes: under the 32-byte minimum


def test_defaults_match_the_contract(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings(None, environ={})
    assert (s.server.host, s.server.port) == ("127.0.0.1", 3000)
    assert s.server.allowed_origins == ("http://localhost:3000", "http://127.0.0.1:3000")
    assert s.server.tls_cert is None and s.server.tls_key is None and s.server.trusted_proxies == ()
    assert (s.auth.algorithm, s.auth.secret, s.auth.issuer, s.auth.audience) == ("HS256", None, "hq", "hq-agents")
    assert (s.auth.access_ttl, s.auth.refresh_ttl, s.auth.bcrypt_rounds, s.auth.expiry_warning) == (900, 604800, 12, 60)
    assert s.auth.leeway <= 30
    lim = s.limits
    assert (lim.login_failures_per_codename, lim.login_failures_per_address, lim.login_window) == (5, 20, 900)
    assert (lim.text_max_bytes, lim.events_per_second, lim.events_burst) == (16384, 20, 40)
    assert s.cluster.redis_url is None
    assert s.storage_url == f"sqlite:///{tmp_path.resolve() / 'hq.sqlite3'}"
    assert s.secret_path == tmp_path.resolve() / "hq.secret"
    assert s.clearance.levels == ("analyst", "field-operative", "handler", "director")
    assert dict(s.channels) == {"missions": ChannelPolicy("field-operative", "handler"),
                                "hq": ChannelPolicy("handler", "field-operative")}


def test_toml_file_values_and_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    config = folder / "hq.toml"
    write_config(config, {
        "server": {"port": 4100, "allowed_origins": ["https://hq.example"], "tls_cert": "tls/hq.crt",
                   "tls_key": "/abs/hq.key", "trusted_proxies": ["10.0.0.0/8"]},
        "auth": {"issuer": "hq-test", "access_ttl": 60, "refresh_ttl": 120, "secret_file": "keys/hq.secret"},
        "limits": {"events_burst": 7},
        "storage": {"url": "sqlite:///data/hq.db"},
        "channels": {"briefs": {"read": "analyst", "write": "director"}},
    })
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative paths must not follow the working folder
    s = load_settings(config, environ={})
    base = folder.resolve()
    assert s.server.port == 4100 and s.server.allowed_origins == ("https://hq.example",)
    assert s.server.trusted_proxies == ("10.0.0.0/8",)
    assert s.server.tls_cert == base / "tls" / "hq.crt" and s.server.tls_key == Path("/abs/hq.key")
    assert s.secret_path == base / "keys" / "hq.secret"
    assert s.storage_url == f"sqlite:///{base / 'data' / 'hq.db'}"
    assert (s.auth.issuer, s.auth.access_ttl, s.limits.events_burst) == ("hq-test", 60, 7)
    assert dict(s.channels) == {"briefs": ChannelPolicy("analyst", "director")}
    assert s.base_dir == base


def test_environment_overrides_beat_the_file(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    write_config(config, {"server": {"port": 4100}, "auth": {"issuer": "from-file"}})
    secret = "s" * 40
    s = load_settings(config, environ={
        "HQ_SERVER_PORT": "4200",                     # JSON, so a number
        "HQ_SERVER_ALLOWED_ORIGINS": '["https://hq.example", "https://hq2.example"]',
        "HQ_AUTH_SECRET": secret,                     # text keys are taken as they are, not as JSON
        "HQ_AUTH_ISSUER": "from-env",
        "HQ_LIMITS_EVENTS_PER_SECOND": "2.5",
        "HQ_CONFIG": "ignored-here",                  # names the file, is not a setting
        "PATH": "/usr/bin",                           # not HQ_*: ignored
    })
    assert s.server.port == 4200
    assert s.server.allowed_origins == ("https://hq.example", "https://hq2.example")
    assert s.auth.secret == secret and s.auth.issuer == "from-env"
    assert s.limits.events_per_second == 2.5


def test_environment_names_outside_hq_sections_are_ignored(tmp_path: Path) -> None:
    # HQ_URL belongs to agent_client; HQ's own variables all start HQ_<SECTION>_.
    others = {"HQ_URL": "https://hq.example", "HQ_NOPE_PORT": "not json", "HQ_": "x", "HQ_SERVERS_PORT": "1"}
    s = load_settings(None, environ=others | {"HQ_SERVER_PORT": "4200"})
    assert s.server.port == 4200
    assert s == load_settings(None, environ={"HQ_SERVER_PORT": "4200"}) and s.base_dir == Path.cwd()


def test_a_typo_inside_a_known_section_is_still_refused_beside_foreign_names() -> None:
    # HQ_URL comes first, so a loader that refused it would name it instead of the typo.
    with pytest.raises(ConfigError) as info:
        load_settings(None, environ={"HQ_URL": "https://hq.example", "HQ_SERVER_PROT": "3000"})
    assert info.value.key == "HQ_SERVER_PROT"


def test_cli_runs_with_agent_client_variables_exported(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    write_config(config, {"auth": {"bcrypt_rounds": 4}, "audit": {"path": "audit.log"}})
    result = run_cli(config, "agents", "list", env={"HQ_URL": "http://127.0.0.1:3000"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["CODENAME", "ROLE", "ENABLED", "CREATED", "LAST_LOGIN", "2FA"] and result.stderr == ""
    typo = run_cli(config, "agents", "list", env={"HQ_URL": "http://127.0.0.1:3000", "HQ_SERVER_PROT": "1"})
    assert typo.returncode == 2 and typo.stderr.strip() == "hq: config: HQ_SERVER_PROT: unknown setting"


def test_config_file_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HQ_CONFIG", raising=False)
    assert find_config(None) is None
    (tmp_path / "config.toml").write_text("")
    assert find_config(None) == Path("config.toml")
    monkeypatch.setenv("HQ_CONFIG", str(tmp_path / "env.toml"))
    assert find_config(None) == tmp_path / "env.toml"
    assert find_config("explicit.toml") == Path("explicit.toml")


# Refusals. Every case is checked in-process (fast); a representative subset also runs the real
# ``python -m hq serve`` for exit code 2 and the one stderr line.

# name -> (TOML sections, extra environment, text the error must name)
REFUSALS: dict[str, tuple[dict[str, Any], dict[str, str], str]] = {
    "unknown key": ({"server": {"prot": 3000}}, {}, "server.prot"),
    "unknown section": ({"nonsense": {"a": 1}}, {}, "nonsense"),
    "wrong type": ({"server": {"port": "3000"}}, {}, "server.port"),
    "bool for int": ({"server": {"port": True}}, {}, "server.port"),
    "wrong list type": ({"server": {"allowed_origins": "http://x"}}, {}, "server.allowed_origins"),
    "port out of range": ({"server": {"port": 70000}}, {}, "server.port"),
    "empty origin list": ({"server": {"allowed_origins": []}}, {}, "server.allowed_origins"),
    "star origin": ({"server": {"allowed_origins": ["*"]}}, {}, "server.allowed_origins"),
    "no director changes": ({"limits": {"director_changes_burst": 0}}, {}, "limits.director_changes_burst"),
    "director changes never back": ({"limits": {"director_changes_per_second": 0}}, {},
                                     "limits.director_changes_per_second"),
    "unknown algorithm": ({"auth": {"algorithm": "none"}}, {}, "auth.algorithm"),
    "leeway over 30 s": ({"auth": {"leeway": 31}}, {}, "auth.leeway"),
    "tls cert without key": ({"server": {"tls_cert": "hq.crt"}}, {}, "server.tls_cert"),
    "unknown channel level": ({"channels": {"x": {"read": "god", "write": "analyst"}}}, {}, "channels.x.read"),
    "short secret in file": ({"auth": {"secret": SHORT_SECRET}}, {}, "auth.secret"),
    "short secret in env": ({}, {"HQ_AUTH_SECRET": SHORT_SECRET}, "auth.secret"),
    "unknown env key": ({}, {"HQ_SERVER_PROT": "1"}, "HQ_SERVER_PROT"),
    "env section without key": ({}, {"HQ_SERVER": "1"}, "HQ_SERVER"),
    "env not JSON": ({}, {"HQ_SERVER_PORT": "three"}, "HQ_SERVER_PORT"),
    "env wrong type": ({}, {"HQ_SERVER_PORT": '"3000"'}, "server.port"),
    "env list not JSON": ({}, {"HQ_SERVER_ALLOWED_ORIGINS": "https://hq.example"}, "HQ_SERVER_ALLOWED_ORIGINS"),
    "invalid TOML": ({"__raw__": {}}, {}, "config.toml"),
}
SUBPROCESS_CASES = ("unknown key", "wrong type", "port out of range", "short secret in file",
                    "short secret in env", "env list not JSON", "invalid TOML")


def _write_case(folder: Path, sections: dict[str, Any]) -> Path:
    folder.mkdir()
    config = folder / "config.toml"
    if "__raw__" in sections:
        config.write_text("[server\nport = \n")
    else:
        write_config(config, sections)
    return config


@pytest.mark.parametrize("case", list(REFUSALS))
def test_bad_config_raises_naming_the_key(case: str, tmp_path: Path) -> None:
    sections, env, expected = REFUSALS[case]
    config = _write_case(tmp_path / "case", sections)
    with pytest.raises(ConfigError) as info:
        load_settings(config, environ=env)
    assert expected in str(info.value) and "\n" not in str(info.value)
    assert SHORT_SECRET not in str(info.value)


def _run_refusal(folder: Path, sections: dict[str, Any], extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    config = _write_case(folder, sections)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HQ_")} | extra_env
    # `serve` would run forever on a config that is wrongly accepted; the timeout turns that into a failure.
    return subprocess.run([sys.executable, "-m", "hq", "serve", "--config", str(config)], cwd=folder,
                          capture_output=True, text=True, timeout=30, env=env)


@pytest.fixture(scope="module")
def refusals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    """Every refusal case, run once, two processes at a time."""
    root = tmp_path_factory.mktemp("refusals")
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(_run_refusal, root / f"case{i}", *REFUSALS[name][:2])
                   for i, name in enumerate(SUBPROCESS_CASES)}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_bad_config_exits_2_with_one_line_naming_the_key(case: str,
                                                         refusals: dict[str, subprocess.CompletedProcess[str]]) -> None:
    result = refusals[case]
    expected = REFUSALS[case][2]
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert SHORT_SECRET not in result.stderr  # a secret is never printed, not even a bad one


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "hq", "serve", "--config", str(tmp_path / "absent.toml")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "absent.toml" in result.stderr
    assert not list(tmp_path.iterdir())  # nothing created on a refused start


@pytest.fixture
def env_server(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """A real HQ whose port and origins come only from HQ_* variables (the file says otherwise)."""
    file_port, env_port = free_port(), free_port()
    config = tmp_path / "config.toml"
    write_config(config, {"server": {"port": file_port}, "auth": {"bcrypt_rounds": 4}})
    env = {k: v for k, v in os.environ.items() if not k.startswith("HQ_")} | {
        "HQ_SERVER_PORT": str(env_port), "HQ_SERVER_ALLOWED_ORIGINS": '["https://hq.example"]',
        "HQ_AUDIT_PATH": "audit.log"}
    log = open(tmp_path / "server.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "hq", "serve", "--config", str(config)], cwd=tmp_path,
                               stdout=log, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        yield env_port, process
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def _handshake(port: int, origin: str | None) -> int:
    headers = {"Origin": origin} if origin else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=polling", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_environment_overrides_reach_the_server(env_server: tuple[int, subprocess.Popen[str]]) -> None:
    port, process = env_server
    deadline = time.monotonic() + 20
    while True:
        assert process.poll() is None, "HQ exited"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
                assert json.loads(response.read()) == {"status": "ok"}
                break
        except (urllib.error.URLError, OSError):
            assert time.monotonic() < deadline, "HQ did not listen on the port from HQ_SERVER_PORT"
            time.sleep(0.05)
    assert _handshake(port, "https://hq.example") == 200
    assert _handshake(port, f"http://127.0.0.1:{port}") == 400  # a default origin, replaced by the env list


def test_port_0_serves_on_a_port_the_kernel_picked_and_names_it(hq_process: HQProcess) -> None:
    """``[server] port = 0`` (what make_server writes): serve binds a free port and its one line names it."""
    config = load_settings(hq_process.config, environ={})
    assert config.server.port == 0 and hq_process.port != 0
    named = [int(match[3]) for match in LISTENING.finditer(hq_process.log_path.read_text())]
    assert named == [hq_process.port], hq_process.log_path.read_text()
    with urllib.request.urlopen(f"http://127.0.0.1:{hq_process.port}/healthz", timeout=5) as response:
        assert json.loads(response.read()) == {"status": "ok"}
