"""The machine's PostgreSQL and Redis, started if they are down, throw-away databases on them, and
private ``redis-server`` processes and PostgreSQL clusters that failure tests may kill (the shared ones are
never stopped)."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

import asyncpg
import pytest

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
    """A throw-away ``redis-server`` that a test may kill and start again (on the same port).

    redis-server cannot bind port 0 and say which port it got, so its first start takes a free
    port and, should another process (another xdist worker) bind it first, retries on a new one;
    it counts as started only once the server answering on the port is this process.
    """

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self._started = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (again, on the same port) and wait until it answers."""
        for _ in range(5):
            self.process = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                             "--save", "", "--appendonly", "no"], cwd=self.workdir,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if self._answers():
                self._started = True
                return
            assert not self._started, f"private redis-server could not bind its port {self.port} again"
            self.port = free_port()
        raise AssertionError("private redis-server found no free port")

    def _answers(self) -> bool:
        """Wait until this process answers on the port (False: it exited, e.g. the port was taken)."""
        assert self.process is not None
        deadline = time.monotonic() + 10
        while self.process.poll() is None:
            info = subprocess.run(["redis-cli", "-p", str(self.port), "info", "server"], capture_output=True, text=True)
            if f"process_id:{self.process.pid}" in info.stdout:
                return True
            assert time.monotonic() < deadline, "private redis-server did not start"
            time.sleep(0.05)
        return False

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


def postgres_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin folder, if it has ``initdb`` and ``pg_ctl``."""
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name),
                         reverse=True):
        if os.access(f"{folder}/initdb", os.X_OK) and os.access(f"{folder}/pg_ctl", os.X_OK):
            return Path(folder)
    return None


def as_postgres_user() -> list[str] | None:
    """How to run a command as the ``postgres`` user (the server refuses to run as root)."""
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return None
    if pwd.getpwuid(os.geteuid()).pw_name == "postgres":
        return []
    if os.geteuid() == 0 and shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--"]
    return None


class PrivatePostgres:
    """A throw-away PostgreSQL cluster of this test module: start, stop (crash), freeze, thaw."""

    def __init__(self, bin_dir: Path, as_postgres: list[str]) -> None:
        self._bin = bin_dir
        self._as_postgres = as_postgres
        # Not pytest's tmp_path: its parents are private to root and the server runs as postgres.
        self.home = Path(tempfile.mkdtemp(prefix="hq-pg-"))
        user = pwd.getpwnam("postgres")
        os.chown(self.home, user.pw_uid, user.pw_gid)
        self.data = self.home / "data"
        self.port = free_port()
        self._frozen: list[int] = []

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        result = subprocess.run([*self._as_postgres, *args], capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            log = self.home / "server.log"
            raise RuntimeError(f"{args[0]} failed: {result.stdout}{result.stderr}"
                               f"{log.read_text() if log.exists() else ''}")

    def init(self) -> None:
        """Make the cluster (trust authentication, superuser ``postgres``)."""
        self._run(str(self._bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        """Start the server and wait until it accepts connections (crash recovery included)."""
        options = f"-p {self.port} -k {self.home} -c listen_addresses=127.0.0.1"
        self._run(str(self._bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.home / "server.log"),
                  "-o", options, "-w", "-t", "60", "start")

    def start_on_a_free_port(self, attempts: int = 5) -> None:
        """The first start: on a new free port while the chosen one turns out to be taken (by
        another xdist worker, between :func:`free_port` and the postmaster's bind)."""
        for attempt in range(attempts):
            try:
                self.start()
                return
            except RuntimeError as exc:
                if "already in use" not in str(exc) or attempt == attempts - 1:
                    raise
                self.port = free_port()

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server; ``immediate`` is a crash: no checkpoint, connections cut at once."""
        self.thaw()
        self._run(str(self._bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def _server_pids(self) -> list[int]:
        """The postmaster and every process it started (backends, checkpointer, ...)."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = []
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                children.append(int(Path(stat).parent.name))
        return [postmaster, *children]

    def freeze(self) -> None:
        """SIGSTOP the whole server: connections stay open, nothing answers (a hung host)."""
        self._frozen = self._server_pids()
        for pid in self._frozen:
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """Undo :meth:`freeze`."""
        for pid in self._frozen:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self._frozen = []

    def remove(self) -> None:
        """Stop if running and delete every file."""
        if self.running:
            try:
                self.stop()
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(self.home, ignore_errors=True)


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started :class:`PrivatePostgres`, removed afterwards; the test is skipped where none can be made."""
    bin_dir, as_postgres = postgres_bin_dir(), as_postgres_user()
    if bin_dir is None:
        pytest.skip("PostgreSQL's initdb and pg_ctl are not installed (/usr/lib/postgresql/*/bin)")
    if as_postgres is None:
        pytest.skip("cannot run commands as the postgres user (needs root and runuser, or to be postgres)")
    cluster = PrivatePostgres(bin_dir, as_postgres)
    try:
        cluster.init()
        cluster.start_on_a_free_port()
        yield cluster
    finally:
        cluster.remove()
