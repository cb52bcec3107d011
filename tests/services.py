"""The machine's PostgreSQL and Redis, started if they are down, throw-away databases on them, and
private ``redis-server`` processes that failure tests may kill (the shared ones are never stopped)."""

from __future__ import annotations

import glob
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import asyncpg

from .support import free_port

PG_ADMIN_URL = os.environ.get("HQ_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("HQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait(port: int, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _listening(port):
            return True
        time.sleep(0.2)
    return False


def ensure_postgres() -> None:
    """Start the local PostgreSQL cluster if nothing listens on 5432."""
    if _listening(5432):
        return
    for version in sorted(glob.glob("/etc/postgresql/*")):
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", os.path.basename(version), "main", "start"],
                       check=False, capture_output=True)
    if not _wait(5432):
        raise RuntimeError("PostgreSQL is not running on 127.0.0.1:5432 and could not be started")


def ensure_redis() -> None:
    """Start the local Redis if nothing listens on 6379."""
    if _listening(6379):
        return
    subprocess.run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", "6379", "--save", "",
                    "--appendonly", "no"], check=False, capture_output=True)
    if not _wait(6379):
        raise RuntimeError("Redis is not running on 127.0.0.1:6379 and could not be started")


async def create_database() -> str:
    """A fresh, empty PostgreSQL database; returns its URL."""
    ensure_postgres()
    name = f"hq_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


async def drop_database(url: str) -> None:
    """Drop a database made by :func:`create_database`."""
    name = url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


class PrivateRedis:
    """A throw-away ``redis-server`` on a free port that a test may kill and start again."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (again, on the same port) and wait until it answers."""
        self.process = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                         "--save", "", "--appendonly", "no"], cwd=self.workdir,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True).stdout != b"PONG\n":
            assert time.monotonic() < deadline, "private redis-server did not start"
            time.sleep(0.05)

    def pause(self, paused: bool) -> None:
        """SIGSTOP / SIGCONT: a Redis that hangs, its connections open but silent (as behind a cut network)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP if paused else signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: an outage without goodbye."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
