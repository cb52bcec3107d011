"""Test support: HQ nodes (real processes or in this process) with their own config, data and agents."""

from __future__ import annotations

from abc import ABC, abstractmethod

import asyncio
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from hq.auth.passwords import PasswordHasher
from hq.config import load_settings
from hq.store import open_store

from .cli import run_cli_in_process

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery staple"

# Agents every test server has, one per clearance level.
AGENTS = {
    "ana": "analyst",
    "fox": "field-operative",
    "hank": "handler",
    "dora": "director",
}


def free_port() -> int:
    """A TCP port nobody listens on right now: only for addresses that must refuse (nothing is
    started on it). A server a test starts binds its port itself (port 0) instead."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def toml_value(value: Any) -> str:
    """Render a Python value as TOML (enough for test configs)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> None:
    """Write a TOML config from ``{section: {key: value}}`` (nested dicts become sub-tables)."""
    lines: list[str] = []
    for section, table in sections.items():
        plain = {k: v for k, v in table.items() if not isinstance(v, dict)}
        nested = {k: v for k, v in table.items() if isinstance(v, dict)}
        if plain:
            lines.append(f"[{section}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in plain.items()]
        for name, sub in nested.items():
            lines.append(f"[{section}.{name}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in sub.items()]
    path.write_text("\n".join(lines) + "\n")


def base_config(port: int, **overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A fast test config: cheap bcrypt, audit to a file, origins of this port."""
    config: dict[str, dict[str, Any]] = {
        "server": {"host": "127.0.0.1", "port": port,
                   "allowed_origins": [f"http://127.0.0.1:{port}", f"http://localhost:{port}"]},
        # No second factor asked of directors (HQ's default): tests/test_mfa*.py turn it back on.
        "auth": {"bcrypt_rounds": 4, "mfa_required": []},
        "audit": {"path": "audit.log"},
        "storage": {"revocation_poll": 0.1},
    }
    for section, values in overrides.items():
        config.setdefault(section, {}).update(values)
    return config


#: The line ``serve`` prints once it listens; it names the URL (and so the port it bound).
LISTENING = re.compile(r"HQ listening on (https?)://([^/\s]+):(\d+)/")


@dataclass
class HQServer(ABC):
    """What a test holds of one HQ node, whether a real process (:class:`HQProcess`) or an app in
    this process (tests/threaded_hq.py): its URL, folder, config, log, audit trail and CLI."""

    workdir: Path
    port: int
    config: Path
    ca_file: Path | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.ca_file else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    @abstractmethod
    def running(self) -> bool:
        """Whether the node serves now."""

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context trusting this server's certificate (None for plain HTTP)."""
        return ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else None

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    @abstractmethod
    def start(self, timeout: float = 20) -> "HQServer":
        """Start serving and return once ``/healthz`` answers."""

    @abstractmethod
    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop serving (gracefully unless ``sig`` asks for a crash)."""

    def restart(self) -> None:
        """Stop gracefully and start again on the same port and data."""
        self.stop()
        self.start()

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run the operator CLI against this server's config (and so its data), in this process."""
        return run_cli_in_process(self.config, *args, stdin=stdin)

    def add_agent(self, codename: str, role: str, password: str = PASSWORD) -> None:
        """Create an agent through the CLI."""
        result = self.cli("agents", "add", codename, "--role", role, "--password-stdin", stdin=password + "\n")
        assert result.returncode == 0, result.stderr

    def audit_lines(self) -> list[dict[str, Any]]:
        """The audit log, parsed."""
        path = self.workdir / "audit.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def login(self, codename: str, password: str = PASSWORD) -> dict[str, Any]:
        """Log in over HTTP; returns the JSON body (raises on failure)."""
        request = urllib.request.Request(f"{self.url}/api/auth/login", method="POST",
                                         data=json.dumps({"username": codename, "password": password}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10, context=self.ssl_context()) as response:
            return json.loads(response.read())

    def wait_healthy(self, deadline: float, failed: Callable[[], str | None]) -> None:
        """Poll ``/healthz`` until it answers 200; ``failed()`` names a reason to give up early."""
        while time.monotonic() < deadline:
            reason = failed()
            if reason is not None:
                raise RuntimeError(f"{reason}:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1,
                                            context=self.ssl_context()) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.05)
        raise RuntimeError(f"HQ did not start:\n{self.log_path.read_text()}")


@dataclass
class HQProcess(HQServer):
    """A real ``python -m hq serve`` process, for tests where the process is the point (signals,
    crashes, the SQLite lock, TLS and logging as ``serve`` sets them up, the CLI's own start-up).

    The port: ``make_server`` writes ``port = 0``; ``serve`` binds a port the kernel picks and
    names it in its ``HQ listening on`` line, which :meth:`start` reads (no port is chosen here
    and bound there later, which two xdist workers could both choose). A restart asks for that
    same port again (``--port``), so clients reconnect to the URL they know.
    """

    process: subprocess.Popen[str] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None

    def start(self, timeout: float = 20) -> "HQProcess":
        """Start the process, learn its port from its first line and wait until ``/healthz`` answers."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("HQ_")}
        command = [sys.executable, "-m", "hq", "serve", "--config", str(self.config)]
        if self.port:
            command += ["--port", str(self.port)]
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "a") as log:
            self.process = subprocess.Popen(command, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                                            env=env, text=True)
        deadline = time.monotonic() + timeout
        process = self.process

        def exited() -> str | None:
            return f"HQ exited with {process.returncode}" if process.poll() is not None else None

        while not self.port:
            reason = exited()
            if reason is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{reason or 'HQ named no port'}:\n{self.log_path.read_text()}")
            with open(self.log_path) as log:
                log.seek(offset)
                match = LISTENING.search(log.read())
            if match:
                self.port = int(match[3])
            else:
                time.sleep(0.02)
        self.wait_healthy(deadline, exited)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the process (SIGKILL for a crash) and wait for it."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def write_server_config(workdir: Path, port: int, agents: dict[str, str] | None,
                        overrides: dict[str, dict[str, Any]]) -> tuple[Path, Path | None]:
    """Write ``workdir/config.toml`` (:func:`base_config` for ``port`` plus ``overrides``) and create
    the agents (default :data:`AGENTS`); returns the config and the CA file a TLS server is trusted by."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.toml"
    write_config(config, base_config(port, **overrides))
    seed_agents(config, AGENTS if agents is None else agents)
    tls_cert = overrides.get("server", {}).get("tls_cert")
    return config, Path(tls_cert) if tls_cert else None


def make_server(workdir: Path, agents: dict[str, str] | None = None, **overrides: dict[str, Any]) -> HQProcess:
    """Write a config into ``workdir`` (``port = 0``: see :class:`HQProcess`), create the agents
    (before start) and return the real process, unstarted.

    Its ``allowed_origins`` cannot name a port nobody has chosen yet: tests that need a browser
    origin of the server itself use the in-process server, which binds before the config is written.
    """
    config, ca_file = write_server_config(workdir, 0, agents, overrides)
    return HQProcess(workdir, 0, config, ca_file=ca_file)


def seed_agents(config: Path, agents: dict[str, str]) -> None:
    """Create ``agents`` (password :data:`PASSWORD`) in the store ``config`` names, in this process.

    A Python start-up per agent (``python -m hq agents add``, which tests/test_cli.py tests and
    :meth:`HQServer.add_agent` runs) was a large part of the whole suite's time. Run in a thread of
    its own, so that callers inside an event loop may use it too.
    """
    if agents:
        settings = load_settings(config, environ={})
        with ThreadPoolExecutor(1) as thread:
            thread.submit(asyncio.run, create_agents(settings.storage_url, agents, settings.auth.bcrypt_rounds)).result()


async def create_agents(storage_url: str, agents: dict[str, str], bcrypt_rounds: int = 4) -> None:
    """Create ``agents`` (password :data:`PASSWORD`) through HQ's own store and hasher, as the CLI does."""
    hasher = PasswordHasher(bcrypt_rounds, 1)
    store = open_store(storage_url)
    await store.open()
    try:
        for codename, role in agents.items():
            await store.add_agent(codename, role, hasher.hash_sync(PASSWORD))
    finally:
        await store.close()
        hasher.close()
